"""``convirt index build | query | eval | add | merge``: the FAISS index of `convirt embed` output."""

from __future__ import annotations

import argparse
import json

from convirt.cli import index_jobs
from convirt.cli.common import add_checkpoint_arguments, model_from_args


def add_parsers(sub: argparse._SubParsersAction) -> None:
    index = sub.add_parser("index", help="FAISS image index: build, query, eval, add, merge")
    isub = index.add_subparsers(dest="index_command", required=True, metavar="{build,query,eval,add,merge}")
    build = isub.add_parser("build", help="build an index from `convirt embed` output")
    build.add_argument("--embeddings", required=True)
    build.add_argument("--factory", default="Flat", help='FAISS factory string: "Flat", "HNSW32", "IVF1024,PQ32"')
    build.add_argument("--refine", action="store_true", help="re-rank candidates exactly (approximate indexes)")
    build.add_argument("--train-size", type=int, default=100_000, help="vectors sampled to train IVF/PQ")
    build.add_argument(
        "--search-params",
        default=None,
        help='FAISS search parameters kept with the index, e.g. "nprobe=32" or "efSearch=64"',
    )
    index_jobs.add_build_arguments(build)
    build.add_argument("--output", required=True)
    build.set_defaults(run=run_build)

    query = isub.add_parser("query", help="top-k similar indexed images for an image file or a text")
    query.add_argument("--index", required=True)
    what = query.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", help="image file to search with")
    what.add_argument("--text", help="report text to search with (text -> image)")
    add_checkpoint_arguments(
        query, required=False, help="model that embeds the query (default: the one the index was built with)"
    )
    query.add_argument("-k", type=int, default=5)
    query.add_argument(
        "--exclude-same-patient",
        action="store_true",
        help="leave out the query patient's indexed images (patient from --patient, or from the "
        "indexed row whose path is --image)",
    )
    query.add_argument("--patient", help="the query's patient id (with --exclude-same-patient)")
    query.add_argument("--mmap", action="store_true", help="memory-map the index instead of reading it")
    query.add_argument("--json", action="store_true", help="print JSON instead of a table")
    query.set_defaults(run=run_query)

    evaluate = isub.add_parser("eval", help="label-aware precision@k, mAP@k, recall@k of image-to-image search")
    evaluate.add_argument("--index", required=True)
    evaluate.add_argument("--queries", help="`convirt embed` output to query with (default: the indexed images)")
    evaluate.add_argument("-k", type=int, default=5)
    evaluate.add_argument(
        "--include-same-patient",
        action="store_true",
        help="count the query patient's other images (left out by default: they inflate scores)",
    )
    evaluate.add_argument(
        "--knn",
        type=int,
        default=0,
        metavar="K",
        help="also score kNN diagnosis (similarity-weighted vote of K neighbours): AUROC per finding",
    )
    evaluate.add_argument(
        "--texts", metavar="DIR", help="`convirt embed --texts` output of the same samples: also image<->text R@1/5/10"
    )
    evaluate.add_argument(
        "--findings",
        nargs="+",
        metavar="NAME",
        help='count only these findings as labels, e.g. --findings Pneumonia ("relevant" = same set of these findings)',
    )
    evaluate.add_argument("--output", help="JSON file for the metrics")
    evaluate.set_defaults(run=run_eval)
    index_jobs.add_parsers(isub)


def run_build(args: argparse.Namespace) -> None:
    from convirt.embeddings import load_embedding_folder
    from convirt.retrieval import build_index_folder

    index_jobs.check_index_output(args.output, args.embeddings)
    if index_jobs.build_out_of_core_if_chosen(args):
        return
    embedded = load_embedding_folder(args.embeddings)
    built = build_index_folder(
        embedded.vectors,
        embedded.rows,
        args.output,
        args.factory,
        refine=args.refine,
        train_size=args.train_size,
        fingerprint=embedded.info,
        search_params=args.search_params,
        progress=True,
    )
    print(
        f"built {args.factory}{' + exact re-ranking' if args.refine else ''} index of "
        f"{built.info.count} x {built.info.dim} -> {args.output}"
    )


def run_query(args: argparse.Namespace) -> None:
    from convirt.bench import query_index_folder
    from convirt.retrieval import open_index_folder

    folder = open_index_folder(args.index, mmap=args.mmap)  # rows read when shown: an index may hold millions
    fingerprint = folder.info.fingerprint
    source = args.model or fingerprint.get("source") or fingerprint.get("checkpoint")
    if not source:
        raise ValueError(f"{args.index} records no model source; pass --model")
    hits = query_index_folder(
        folder, model_from_args(args, source), args.image, args.text, args.k, args.exclude_same_patient, args.patient
    )
    if args.json:
        print(json.dumps(hits, indent=2))
        return
    print(f"{'rank':>4} {'score':>6}  {'key':<24} labels")
    for hit in hits:
        print(f"{hit['rank']:>4} {hit['score']:>6.3f}  {hit['key']:<24} {'; '.join(hit.get('labels', []))}")


def run_eval(args: argparse.Namespace) -> None:
    from convirt._io import write_json
    from convirt.bench import evaluate_index_folder

    result = evaluate_index_folder(
        args.index, args.k, args.queries, args.include_same_patient, args.knn, args.texts, args.findings
    )
    if args.output:
        write_json(args.output, result)
    if args.knn:
        for name, value in result["knn"]["auroc"].items():
            print(
                f"kNN diagnosis ({args.knn} neighbours) AUROC {name}: {value:.3f}"
                if value == value
                else f"kNN AUROC {name}: n/a (one class only)"
            )
    if args.texts:
        for direction, values in result["image_text"].items():
            if isinstance(values, dict):
                print(f"{direction}: " + "  ".join(f"R@{name.rsplit('_', 1)[1]} {v:.3f}" for name, v in values.items()))
    k = args.k
    print(
        f"label precision@{k}: {result[f'precision_at_{k}']:.3f}  mAP@{k}: {result[f'map_at_{k}']:.3f}  "
        f"recall@{k}: {result[f'recall_at_{k}']:.3f} over {result['queries']} queries"
    )
