"""``convirt embed`` and ``convirt index build | query | eval``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np



EMBEDDINGS = "embeddings.npy"
METADATA = "metadata.jsonl"
INFO = "info.json"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    embed = sub.add_parser("embed", help="embed the images of a shard split")
    embed.add_argument("--checkpoint", required=True)
    embed.add_argument("--data", required=True, help="shard folder")
    embed.add_argument("--split", default="test")
    embed.add_argument("--output", required=True)
    embed.add_argument("--batch-size", type=int, default=64)
    embed.set_defaults(run=run_embed)

    index = sub.add_parser("index", help="FAISS image index: build, query, eval")
    isub = index.add_subparsers(dest="index_command", required=True, metavar="{build,query,eval}")
    build = isub.add_parser("build", help="build an index from `convirt embed` output")
    build.add_argument("--embeddings", required=True)
    build.add_argument("--factory", default="Flat", help='FAISS factory string: "Flat", "HNSW32", "IVF256,PQ16"')
    build.add_argument("--output", required=True)
    build.set_defaults(run=run_build)

    query = isub.add_parser("query", help="top-k similar indexed images for an image file")
    query.add_argument("--index", required=True)
    query.add_argument("--image", required=True)
    query.add_argument("--checkpoint", help="model that embeds the query (default: the one the index was built with)")
    query.add_argument("-k", type=int, default=5)
    query.add_argument("--json", action="store_true", help="print JSON instead of a table")
    query.set_defaults(run=run_query)

    evaluate = isub.add_parser("eval", help="label-aware precision@k of image-to-image search")
    evaluate.add_argument("--index", required=True)
    evaluate.add_argument("--queries", help="`convirt embed` output to query with (default: the indexed images, "
                                            "each excluding itself)")
    evaluate.add_argument("-k", type=int, default=5)
    evaluate.add_argument("--output", help="JSON file for the metrics")
    evaluate.set_defaults(run=run_eval)


def run_embed(args: argparse.Namespace) -> None:
    import numpy as np

    from convirt.cli.common import eval_batches, model_fingerprint, write_json
    from convirt.embeddings import embed_batches
    from convirt.models import load_checkpoint

    loaded = load_checkpoint(args.checkpoint)
    embedded = embed_batches(loaded.model, eval_batches(loaded, args.data, args.split, args.batch_size))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / EMBEDDINGS, embedded.embeddings)
    with open(out / METADATA, "w", encoding="utf-8") as handle:
        for key, meta, text in zip(embedded.keys, embedded.meta, embedded.texts):
            handle.write(json.dumps({"key": key, **meta, "text": text}) + "\n")
    write_json(out / INFO, model_fingerprint(loaded, int(embedded.embeddings.shape[1])))
    print(f"embedded {len(embedded.keys)} images -> {out} (dim {embedded.embeddings.shape[1]})")


def _read_embeddings(folder: str) -> tuple[np.ndarray, list[dict], dict]:
    import numpy as np

    path = Path(folder)
    if not (path / EMBEDDINGS).is_file():
        raise FileNotFoundError(f"no {EMBEDDINGS} in {folder}: run `convirt embed` first")
    vectors = np.load(path / EMBEDDINGS)
    with open(path / METADATA, encoding="utf-8") as handle:
        metadata = [json.loads(line) for line in handle]
    info = json.loads((path / INFO).read_text(encoding="utf-8"))
    if len(metadata) != len(vectors):
        raise ValueError(f"{folder}: {len(vectors)} embeddings but {len(metadata)} metadata rows")
    return vectors, metadata, info


def run_build(args: argparse.Namespace) -> None:
    from convirt.retrieval import build_index, save_index

    vectors, _, info = _read_embeddings(args.embeddings)
    index, index_info = build_index(vectors, args.factory, fingerprint=info)
    save_index(index, index_info, args.output, extra_files={METADATA: str(Path(args.embeddings) / METADATA)})
    print(f"built {args.factory} index of {index_info.count} x {index_info.dim} -> {args.output}")


def _read_index(folder: str) -> tuple[Any, Any, list[dict]]:
    from convirt.retrieval import load_index

    index, info = load_index(folder)
    with open(Path(folder) / METADATA, encoding="utf-8") as handle:
        metadata = [json.loads(line) for line in handle]
    return index, info, metadata


def run_query(args: argparse.Namespace) -> None:
    import torch

    from convirt.data.images import load_grayscale
    from convirt.data.transforms import image_transform_for
    from convirt.models import get_preprocess_cfg, load_checkpoint
    from convirt.retrieval import search

    index, info, metadata = _read_index(args.index)
    checkpoint = args.checkpoint or info.fingerprint.get("checkpoint")  # type: ignore[attr-defined]
    if not checkpoint:
        raise ValueError(f"{args.index} records no checkpoint; pass --checkpoint")
    loaded = load_checkpoint(checkpoint)
    if loaded.model_name != info.fingerprint.get("model_name"):  # type: ignore[attr-defined]
        raise ValueError(f"model {loaded.model_name!r} does not match the index's "
                         f"{info.fingerprint.get('model_name')!r}")  # type: ignore[attr-defined]
    transform = image_transform_for(get_preprocess_cfg(loaded.model_name), train=False)
    image = transform(load_grayscale(args.image)).unsqueeze(0)
    with torch.no_grad():
        vector = loaded.model.encode_image(image, normalize=True).numpy()
    scores, ids = search(index, vector, args.k)  # type: ignore[arg-type]
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
    from convirt.retrieval import label_precision_at_k, search

    index, info, metadata = _read_index(args.index)
    index_sets = [finding_set(m.get("labels", [])) for m in metadata]
    if args.queries:
        vectors, query_meta, query_info = _read_embeddings(args.queries)
        if query_info.get("checkpoint_sha256") != info.fingerprint.get("checkpoint_sha256"):  # type: ignore[attr-defined]
            raise ValueError("queries were embedded with another model than the index "
                             f"({query_info.get('checkpoint')} vs {info.fingerprint.get('checkpoint')})")  # type: ignore[attr-defined]
        query_ids = None
    else:
        vectors = index.reconstruct_n(0, index.ntotal)  # type: ignore[attr-defined]
        query_meta, query_ids = metadata, list(range(len(metadata)))
    _, ids = search(index, vectors, args.k + 1)  # type: ignore[arg-type]
    precision = label_precision_at_k(ids, [finding_set(m.get("labels", [])) for m in query_meta], index_sets,
                                     args.k, query_ids)
    result = {f"precision_at_{args.k}": precision, "queries": len(query_meta), "indexed": len(metadata),
              "factory": info.factory}  # type: ignore[attr-defined]
    if args.output:
        write_json(args.output, result)
    print(f"label precision@{args.k}: {precision:.3f} over {len(query_meta)} queries")
