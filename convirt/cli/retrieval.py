"""``convirt embed`` and ``convirt index build | query | eval``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convirt.cli.common import add_checkpoint_arguments, add_input_arguments, load_model

if TYPE_CHECKING:
    import numpy as np


METADATA = "metadata.jsonl"
INFO = "info.json"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    embed = sub.add_parser("embed", help="embed the images (or report texts) of shards, a CSV or an image folder")
    add_checkpoint_arguments(embed)
    add_input_arguments(embed)
    embed.add_argument("--output", required=True)
    embed.add_argument("--texts", action="store_true", help="embed the report texts instead of the images")
    embed.add_argument("--chunk-size", type=int, default=4096, help="vectors per part file (resume granularity)")
    embed.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    embed.add_argument("--devices", default="1", help="processes (DDP ranks; each writes its own parts)")
    embed.add_argument("--accelerator", default="auto", help="auto, cpu or gpu")
    embed.add_argument("--precision", default=None,
                       help="Lightning precision (default: chosen for the device: bf16-mixed where bf16 is native, "
                            "16-mixed on older CUDA cards, else 32-true)")
    embed.add_argument("--workers", type=int, default=0, help="data-loading processes per rank")
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
    add_checkpoint_arguments(query, required=False,
                             help="model that embeds the query (default: the one the index was built with)")
    query.add_argument("-k", type=int, default=5)
    query.add_argument("--exclude-same-patient", action="store_true",
                       help="leave out the query patient's indexed images (patient from --patient, or from the "
                            "indexed row whose path is --image)")
    query.add_argument("--patient", help="the query's patient id (with --exclude-same-patient)")
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
    evaluate.add_argument("--texts", metavar="DIR",
                          help="`convirt embed --texts` output of the same samples: also image<->text R@1/5/10")
    evaluate.add_argument("--findings", nargs="+", metavar="NAME",
                          help='count only these findings as labels, e.g. --findings Pneumonia ("relevant" = '
                               "same set of these findings)")
    evaluate.add_argument("--output", help="JSON file for the metrics")
    evaluate.set_defaults(run=run_eval)

    merge = isub.add_parser("merge", help="merge indexes built in parts into one")
    merge.add_argument("--inputs", nargs="+", required=True, help="index folders, in order")
    merge.add_argument("--output", required=True)
    merge.set_defaults(run=run_merge)


def run_embed(args: argparse.Namespace) -> None:
    from functools import partial

    from convirt.cli.common import eval_batches, model_fingerprint, write_json
    from convirt.data.inputs import parse_where
    from convirt.embeddings.store import SKIPPED_PREFIX, PartWriter, completed_parts, embedded_keys, skipped_samples
    from convirt.retrieval import check_fingerprint
    from convirt.training.predict import predict_features

    loaded = load_model(args)
    out = Path(args.output)
    modality = "text" if args.texts else "image"
    fingerprint = {**model_fingerprint(loaded), "modality": modality}
    if completed_parts(out) and (out / INFO).is_file():
        # Resuming: the parts on disk must come from the same model and modality.
        before = json.loads((out / INFO).read_text(encoding="utf-8"))
        check_fingerprint(before, fingerprint, what="output folder")
        if before.get("modality", "image") != modality:
            raise ValueError(f"{out} holds {before.get('modality', 'image')} embeddings; this run makes {modality} "
                             "embeddings: use another --output")
    write_json(out / INFO, fingerprint)
    for stale in out.glob(f"{SKIPPED_PREFIX}*.json"):  # a count per rank of the run before
        stale.unlink()
    done = embedded_keys(out)
    batches = eval_batches(loaded, args.data, args.split, args.batch_size, skip_keys=done,
                           where=parse_where(args.where), num_workers=args.workers,
                           split_by_rank=args.devices not in ("1", 1), texts_only=bool(args.texts))
    devices = int(args.devices) if str(args.devices).isdigit() else args.devices
    predict_features(loaded.model, batches,
                     partial(PartWriter, out, chunk_size=args.chunk_size, dtype=args.dtype),
                     modality=modality, accelerator=args.accelerator, devices=devices, precision=args.precision)
    count, skipped = len(embedded_keys(out)), skipped_samples(out)
    write_json(out / INFO, {**fingerprint, "skipped_samples": skipped})
    if count == 0:
        raise ValueError(f"nothing to embed in {args.data}" + (f" ({args.split})" if args.split else "")
                         + (f": {skipped} corrupt samples skipped" if skipped else ""))
    print(f"embedded {count} {modality}s -> {out}" + (f" ({skipped} corrupt samples skipped)" if skipped else ""))


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
    from convirt.models import get_preprocess_cfg
    from convirt.retrieval import check_fingerprint, search

    index, info, metadata = _read_index(args.index, mmap=args.mmap)
    checkpoint = args.checkpoint or info.fingerprint.get("checkpoint")
    if not checkpoint:
        raise ValueError(f"{args.index} records no checkpoint; pass --checkpoint")
    loaded = load_model(args, checkpoint)
    check_fingerprint(info.fingerprint, model_fingerprint(loaded))
    with torch.no_grad():
        if args.image:
            transform = image_transform_for(get_preprocess_cfg(loaded.model_name), train=False)
            vector = loaded.model.encode_image(transform(load_grayscale(args.image)).unsqueeze(0), normalize=True)
        else:
            vector = loaded.model.encode_text(loaded.tokenizer([args.text]), normalize=True)
    excluded = _query_patient_rows(args, metadata) if args.exclude_same_patient else set()
    scores, ids = search(index, vector.numpy(), min(args.k + len(excluded), index.ntotal))
    kept = [(s, i) for s, i in zip(scores[0], ids[0]) if i >= 0 and int(i) not in excluded][:args.k]
    hits = [{"rank": r + 1, "score": round(float(s), 4), **metadata[i]} for r, (s, i) in enumerate(kept)]
    if args.json:
        print(json.dumps(hits, indent=2))
        return
    print(f"{'rank':>4} {'score':>6}  {'key':<24} labels")
    for hit in hits:
        print(f"{hit['rank']:>4} {hit['score']:>6.3f}  {hit['key']:<24} {'; '.join(hit.get('labels', []))}")


def _query_patient_rows(args: argparse.Namespace, metadata: list[dict]) -> set[int]:
    """Index rows of the query's patient: named by --patient, or found through the image path."""
    patient = args.patient
    if patient is None and args.image:
        wanted = Path(args.image).resolve()
        found = [row for row in metadata if row.get("path") and Path(row["path"]).resolve() == wanted]
        patient = found[0].get("patient_id") if found else None
    if patient is None:
        raise ValueError("--exclude-same-patient needs the query's patient: pass --patient ID (the image is not "
                         "an indexed file)")
    return {i for i, row in enumerate(metadata) if str(row.get("patient_id", "")) == str(patient)}


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
    only = set(args.findings) if args.findings else None

    def findings(rows: list[dict]) -> list[frozenset[str]]:
        sets = [finding_set(m.get("labels", [])) for m in rows]
        return [s & only for s in sets] if only is not None else sets

    result: dict[str, Any] = retrieval_metrics(ids, findings(query_meta), findings(metadata), args.k, exclude)
    if only is not None:
        result["findings"] = sorted(only)
    result.update({"indexed": len(metadata), "factory": info.factory,
                   "same_patient_excluded": not args.include_same_patient})
    if args.knn:
        result["knn"] = _knn_auroc(ids, similarities, metadata, query_meta, args.knn, exclude, only)
    if args.texts:
        result["image_text"] = _image_text_recall(vectors, query_meta, args.texts, info.fingerprint)
    if args.output:
        write_json(args.output, result)
    if args.knn:
        for name, value in result["knn"]["auroc"].items():
            print(f"kNN diagnosis ({args.knn} neighbours) AUROC {name}: "
                  f"{value:.3f}" if value == value else f"kNN AUROC {name}: n/a (one class only)")
    if args.texts:
        for direction, values in result["image_text"].items():
            if isinstance(values, dict):
                print(f"{direction}: " + "  ".join(f"R@{name.rsplit('_', 1)[1]} {v:.3f}" for name, v in values.items()))
    k = args.k
    print(f"label precision@{k}: {result[f'precision_at_{k}']:.3f}  mAP@{k}: {result[f'map_at_{k}']:.3f}  "
          f"recall@{k}: {result[f'recall_at_{k}']:.3f} over {result['queries']} queries")


def _image_text_recall(image_vectors: Any, image_meta: list[dict], texts: str, fingerprint: dict) -> dict[str, Any]:
    """Image->text and text->image R@1/5/10. A report counts as correct for an image when it is the
    image's own report or identical to it after normalisation (archives repeat normal reports)."""
    from convirt.data.stream import text_group
    from convirt.retrieval import build_index, check_fingerprint, recall_at_ks, search

    text_vectors, text_meta, text_info = _read_embeddings(texts)
    check_fingerprint(fingerprint, text_info, what="index (texts)")
    own = {row["key"]: text_group(row.get("text", "")) for row in text_meta}
    keep = [i for i, row in enumerate(image_meta) if row["key"] in own]
    if not keep:
        raise ValueError(f"no indexed image has a report in {texts} (keys differ)")
    groups_of_texts = [text_group(row.get("text", "")) for row in text_meta]
    by_group: dict[int, set[int]] = {}
    for i, group in enumerate(groups_of_texts):
        by_group.setdefault(group, set()).add(i)
    image_groups = [own[image_meta[i]["key"]] for i in keep]
    images = image_vectors[keep]
    depth = 10
    text_index, _ = build_index(text_vectors, "Flat")
    _, to_text = search(text_index, images, min(depth, len(text_vectors)))
    image_index, _ = build_index(images, "Flat")
    _, to_image = search(image_index, text_vectors, min(depth, len(keep)))
    image_by_group: dict[int, set[int]] = {}
    for i, group in enumerate(image_groups):
        image_by_group.setdefault(group, set()).add(i)
    ks = [k for k in (1, 5, 10) if k <= min(depth, len(text_vectors), len(keep))]
    text_targets = [by_group[g] for g in image_groups]
    image_targets = [image_by_group.get(g, set()) for g in groups_of_texts]
    answered = [i for i, t in enumerate(image_targets) if t]
    return {
        "image_to_text": recall_at_ks(to_text, text_targets, ks),
        "text_to_image": recall_at_ks(to_image[answered], [image_targets[i] for i in answered], ks),
        "images": len(keep), "texts": len(text_vectors),
    }


def _knn_auroc(ids: Any, similarities: Any, metadata: list[dict], query_meta: list[dict], k: int,
               exclude: list[set[int]], only: set[str] | None = None) -> dict[str, Any]:
    """kNN diagnosis scored per finding with the zero-shot metrics."""
    import numpy as np

    from convirt.data.schema import finding_set
    from convirt.retrieval import knn_scores
    from convirt.zeroshot.metrics import mean_defined, per_finding_auroc

    names = sorted(set().union(*(finding_set(m.get("labels", [])) for m in metadata)))
    if only is not None:
        names = [name for name in names if name in only]
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
