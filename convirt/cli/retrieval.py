"""``convirt embed`` and ``convirt index build | query | eval``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


METADATA = "metadata.jsonl"
INFO = "info.json"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    embed = sub.add_parser("embed", help="embed the images of a shard split")
    embed.add_argument("--checkpoint", required=True)
    embed.add_argument("--data", required=True, help="shard folder")
    embed.add_argument("--split", default="test")
    embed.add_argument("--output", required=True)
    embed.add_argument("--batch-size", type=int, default=64)
    embed.add_argument("--chunk-size", type=int, default=4096, help="vectors per part file (resume granularity)")
    embed.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    embed.set_defaults(run=run_embed)

    index = sub.add_parser("index", help="FAISS image index: build, query, eval, merge")
    isub = index.add_subparsers(dest="index_command", required=True, metavar="{build,query,eval,merge}")
    build = isub.add_parser("build", help="build an index from `convirt embed` output")
    build.add_argument("--embeddings", required=True)
    build.add_argument("--factory", default="Flat", help='FAISS factory string: "Flat", "HNSW32", "IVF1024,PQ32"')
    build.add_argument("--refine", action="store_true", help="re-rank candidates exactly (approximate indexes)")
    build.add_argument("--train-size", type=int, default=100_000, help="vectors sampled to train IVF/PQ")
    build.add_argument("--search-params", default=None,
                       help='FAISS search parameters kept with the index, e.g. "nprobe=32" or "efSearch=64"')
    build.add_argument("--output", required=True)
    build.set_defaults(run=run_build)

    query = isub.add_parser("query", help="top-k similar indexed images for an image file or a text")
    query.add_argument("--index", required=True)
    what = query.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", help="image file to search with")
    what.add_argument("--text", help="report text to search with (text -> image)")
    query.add_argument("--checkpoint", help="model that embeds the query (default: the one the index was built with)")
    query.add_argument("-k", type=int, default=5)
    query.add_argument("--mmap", action="store_true", help="memory-map the index instead of reading it")
    query.add_argument("--json", action="store_true", help="print JSON instead of a table")
    query.set_defaults(run=run_query)

    evaluate = isub.add_parser("eval", help="label-aware precision@k, mAP@k, recall@k of image-to-image search")
    evaluate.add_argument("--index", required=True)
    evaluate.add_argument("--queries", help="`convirt embed` output to query with (default: the indexed images)")
    evaluate.add_argument("-k", type=int, default=5)
    evaluate.add_argument("--include-same-patient", action="store_true",
                          help="count the query patient's other images (left out by default: they inflate scores)")
    evaluate.add_argument("--knn", type=int, default=0, metavar="K",
                          help="also score kNN diagnosis (similarity-weighted vote of K neighbours): AUROC per finding")
    evaluate.add_argument("--output", help="JSON file for the metrics")
    evaluate.set_defaults(run=run_eval)

    merge = isub.add_parser("merge", help="merge indexes built in parts into one")
    merge.add_argument("--inputs", nargs="+", required=True, help="index folders, in order")
    merge.add_argument("--output", required=True)
    merge.set_defaults(run=run_merge)


def run_embed(args: argparse.Namespace) -> None:
    from convirt.cli.common import eval_batches, model_fingerprint, write_json
    from convirt.embeddings import embed_to_folder
    from convirt.embeddings.store import completed_parts
    from convirt.models import load_checkpoint
    from convirt.retrieval import check_fingerprint

    loaded = load_checkpoint(args.checkpoint)
    out = Path(args.output)
    fingerprint = model_fingerprint(loaded)
    if completed_parts(out) and (out / INFO).is_file():
        # Resuming: the parts on disk must come from the same model.
        check_fingerprint(json.loads((out / INFO).read_text(encoding="utf-8")), fingerprint, what="output folder")
    write_json(out / INFO, fingerprint)
    count = embed_to_folder(
        loaded.model, lambda done: eval_batches(loaded, args.data, args.split, args.batch_size, skip_keys=done),
        out, chunk_size=args.chunk_size, dtype=args.dtype,
    )
    if count == 0:
        raise ValueError(f"no images to embed in {args.data} ({args.split})")
    print(f"embedded {count} images -> {out}")


def _read_embeddings(folder: str) -> tuple[np.ndarray, list[dict], dict]:
    from convirt.embeddings import read_embeddings

    vectors, metadata = read_embeddings(folder)
    info_path = Path(folder) / INFO
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    info["dim"] = int(vectors.shape[1])
    return vectors, metadata, info


def run_build(args: argparse.Namespace) -> None:
    from convirt.retrieval import build_index

    vectors, rows, info = _read_embeddings(args.embeddings)
    index, index_info = build_index(vectors, args.factory, refine=args.refine, train_size=args.train_size,
                                    fingerprint=info, search_params=args.search_params, progress=True)
    _save_with_metadata(index, index_info, args.output, rows)
    print(f"built {args.factory}{' + exact re-ranking' if args.refine else ''} index of "
          f"{index_info.count} x {index_info.dim} -> {args.output}")


def _read_metadata(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"no {path.name} in {path.parent}")
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def _read_index(folder: str, mmap: bool = False) -> tuple[Any, Any, list[dict]]:
    from convirt.retrieval import load_index

    index, info = load_index(folder, mmap=mmap)
    return index, info, _read_metadata(Path(folder) / METADATA)


def run_query(args: argparse.Namespace) -> None:
    import torch

    from convirt.cli.common import model_fingerprint
    from convirt.data.images import load_grayscale
    from convirt.data.transforms import image_transform_for
    from convirt.models import get_preprocess_cfg, load_checkpoint
    from convirt.retrieval import check_fingerprint, search

    index, info, metadata = _read_index(args.index, mmap=args.mmap)
    checkpoint = args.checkpoint or info.fingerprint.get("checkpoint")
    if not checkpoint:
        raise ValueError(f"{args.index} records no checkpoint; pass --checkpoint")
    loaded = load_checkpoint(checkpoint)
    check_fingerprint(info.fingerprint, model_fingerprint(loaded))
    with torch.no_grad():
        if args.image:
            transform = image_transform_for(get_preprocess_cfg(loaded.model_name), train=False)
            vector = loaded.model.encode_image(transform(load_grayscale(args.image)).unsqueeze(0), normalize=True)
        else:
            vector = loaded.model.encode_text(loaded.tokenizer([args.text]), normalize=True)
    scores, ids = search(index, vector.numpy(), args.k)
    hits = [{"rank": r + 1, "score": round(float(s), 4), **metadata[i]}
            for r, (s, i) in enumerate(zip(scores[0], ids[0])) if i >= 0]
    if args.json:
        print(json.dumps(hits, indent=2))
        return
    print(f"{'rank':>4} {'score':>6}  {'key':<24} labels")
    for hit in hits:
        print(f"{hit['rank']:>4} {hit['score']:>6.3f}  {hit['key']:<24} {'; '.join(hit.get('labels', []))}")


def run_eval(args: argparse.Namespace) -> None:
    from convirt.cli.common import write_json
    from convirt.data.schema import finding_set
    from convirt.retrieval import check_fingerprint, index_vectors, retrieval_metrics, same_patient_exclusions, search

    index, info, metadata = _read_index(args.index)
    if args.queries:
        vectors, query_meta, query_info = _read_embeddings(args.queries)
        check_fingerprint(info.fingerprint, query_info, what="index (queries)")
        self_ids: list[set[int]] = [set() for _ in query_meta]
    else:
        _, vectors = index_vectors(index)
        query_meta = metadata
        self_ids = [{row} for row in range(len(metadata))]
    exclude = self_ids
    if not args.include_same_patient:
        patients = same_patient_exclusions([str(m.get("patient_id", "")) for m in query_meta],
                                           [str(m.get("patient_id", "")) for m in metadata])
        exclude = [a | b for a, b in zip(self_ids, patients)]
    depth = max(args.k, args.knn) + max((len(e) for e in exclude), default=0)
    similarities, ids = search(index, vectors, min(depth, index.ntotal))
    result: dict[str, Any] = retrieval_metrics(ids, [finding_set(m.get("labels", [])) for m in query_meta],
                                               [finding_set(m.get("labels", [])) for m in metadata], args.k, exclude)
    result.update({"indexed": len(metadata), "factory": info.factory,
                   "same_patient_excluded": not args.include_same_patient})
    if args.knn:
        result["knn"] = _knn_auroc(ids, similarities, metadata, query_meta, args.knn, exclude)
    if args.output:
        write_json(args.output, result)
    if args.knn:
        for name, value in result["knn"]["auroc"].items():
            print(f"kNN diagnosis ({args.knn} neighbours) AUROC {name}: "
                  f"{value:.3f}" if value is not None else f"kNN AUROC {name}: n/a (one class only)")
    k = args.k
    print(f"label precision@{k}: {result[f'precision_at_{k}']:.3f}  mAP@{k}: {result[f'map_at_{k}']:.3f}  "
          f"recall@{k}: {result[f'recall_at_{k}']:.3f} over {result['queries']} queries")


def _knn_auroc(ids: Any, similarities: Any, metadata: list[dict], query_meta: list[dict], k: int,
               exclude: list[set[int]]) -> dict[str, Any]:
    """kNN diagnosis scored per finding with the zero-shot metrics."""
    import numpy as np

    from convirt.data.schema import finding_set
    from convirt.retrieval import knn_scores
    from convirt.zeroshot.metrics import mean_defined, per_finding_auroc

    names = sorted(set().union(*(finding_set(m.get("labels", [])) for m in metadata)))
    if not names:
        raise ValueError("the indexed images carry no finding labels; kNN diagnosis needs them")

    def matrix(rows: list[dict]) -> Any:
        return np.array([[name in finding_set(r.get("labels", [])) for name in names] for r in rows], dtype=int)

    scores = knn_scores(ids, similarities, matrix(metadata), k, exclude)
    auroc = per_finding_auroc(matrix(query_meta), scores, names)
    return {"k": k, "auroc": auroc, "mean_auroc": mean_defined(auroc)}


def _save_with_metadata(index: Any, info: Any, output: str, rows: list[dict]) -> None:
    """Save an index folder with its metadata table (one JSON row per indexed vector, by id)."""
    import tempfile

    from convirt.retrieval import save_index

    with tempfile.TemporaryDirectory() as tmp:
        metadata = Path(tmp) / METADATA
        with open(metadata, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
        save_index(index, info, output, extra_files={METADATA: str(metadata)})


def run_merge(args: argparse.Namespace) -> None:
    from convirt.retrieval import merge_indexes

    parts = [_read_index(folder) for folder in args.inputs]
    index, info = merge_indexes([(index, info) for index, info, _ in parts], renumber=True)
    _save_with_metadata(index, info, args.output, [row for _, _, rows in parts for row in rows])
    print(f"merged {len(parts)} indexes into {info.count} x {info.dim} -> {args.output}")
