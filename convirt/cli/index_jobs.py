"""``convirt index build --out-of-core | --train-only``, ``index add``, ``index merge``: an IVF index larger
than memory, built in one job or in many (train once, fill blocks of parts in separate jobs, merge)."""

from __future__ import annotations

import argparse


def add_build_arguments(build: argparse.ArgumentParser) -> None:
    build.add_argument(
        "--out-of-core",
        action="store_true",
        help="IVF factories: train on a sample, add part by part, keep the lists on disk (memory bounded); "
        "chosen by itself when the vectors pass a quarter of the memory available",
    )
    build.add_argument(
        "--train-only",
        action="store_true",
        help="write only the trained (empty) index; jobs then fill it with `convirt index add`",
    )


def add_parsers(isub: argparse._SubParsersAction) -> None:
    add = isub.add_parser("add", help="fill a trained index with one job's block of the parts: a sub-index")
    add.add_argument("--trained", required=True, help="`convirt index build --train-only` output")
    add.add_argument("--embeddings", required=True, help="the embedding folder it was trained for")
    add.add_argument("--part", default="1/1", help="this job's block of the embedding parts, I/N (from 1)")
    add.add_argument("--output", required=True)
    add.set_defaults(run=run_add)

    merge = isub.add_parser("merge", help="merge index folders built in parts, or sub-indexes (`index add`), into one")
    merge.add_argument("--inputs", nargs="+", required=True, help="index folders in order, or sub-indexes in any order")
    merge.add_argument("--output", required=True)
    merge.set_defaults(run=run_merge)


def check_index_output(output: str, *inputs: str) -> None:
    """Refuse an output folder that an index command would replace but did not write (an input, other
    files); an index, sub-index or trained index there is replaced, as a run again does."""
    from pathlib import Path

    from convirt._io import check_output_folder
    from convirt.retrieval.index import INDEX_FILE
    from convirt.retrieval.ondisk import SUB_INFO, TRAINED_INFO

    def written_by_index(folder: Path) -> bool:
        return any((folder / name).is_file() for name in (INDEX_FILE, SUB_INFO, TRAINED_INFO))

    check_output_folder(output, inputs, written_by_index)


def build_out_of_core_if_chosen(args: argparse.Namespace) -> bool:
    """Build out of core when asked, or when an IVF factory meets vectors past a quarter of the
    memory available now (measured, and said); ``False``: build in memory."""
    from convirt.embeddings import list_embedding_parts
    from convirt.retrieval.ondisk import available_memory, build_out_of_core, out_of_core_needed, train_ivf

    listed = list_embedding_parts(args.embeddings)
    count, dim = sum(part.count for part in listed.parts), int(listed.info["dim"])
    if not (args.out_of_core or args.train_only):
        raw, available = count * dim * 4, available_memory()
        if not out_of_core_needed(count, dim, available):
            return False
        size = f"{count:,} x {dim} float32 vectors ({raw / 1e9:.1f} GB) pass a quarter of the {available / 1e9:.1f} GB"
        if "IVF" not in args.factory or args.refine:
            print(f"index build: {size} available; {args.factory} is built in memory (an IVF factory would not be)")
            return False
        print(f"index build: {size} available: building out of core (inverted lists on disk)")
    if args.refine:
        raise ValueError("--refine keeps a copy of every vector in memory: leave it out to build out of core")
    options = {"train_size": args.train_size, "fingerprint": listed.info, "search_params": args.search_params}
    if args.train_only:
        info = train_ivf(listed.parts, args.output, args.factory, **options)
        print(
            f"trained {args.factory} for {info.count:,} x {info.dim} -> {args.output}; fill it with `convirt index add "
            f"--trained {args.output} --embeddings {args.embeddings} --part I/N --output SUB_I` (one job per I), "
            "then `convirt index merge --inputs SUB_1 ... SUB_N --output INDEX`"
        )
    else:
        info = build_out_of_core(listed.parts, args.output, args.factory, progress=True, **options)
        print(f"built {args.factory} index of {info.count:,} x {info.dim} out of core -> {args.output}")
    return True


def run_add(args: argparse.Namespace) -> None:
    from convirt.data.parts import parse_part
    from convirt.embeddings import list_embedding_parts
    from convirt.retrieval.ondisk import add_parts, part_block

    part = parse_part(args.part)
    check_index_output(args.output, args.trained, args.embeddings)
    listed = list_embedding_parts(args.embeddings)
    block = part_block(len(listed.parts), part.number, part.total)
    sub = add_parts(args.trained, listed.parts, args.output, block, fingerprint=listed.info, progress=True)
    if not block:
        none = f"job {part.number} of {part.total} has none of the {len(listed.parts)} parts"
        print(f"{none}: empty sub-index (it merges like the others) -> {args.output}")
        return
    print(
        f"added parts {block.start + 1}..{block.stop} of {len(listed.parts)} (ids {sub['first']:,}.."
        f"{sub['first'] + sub['count'] - 1:,} of {sub['total']:,}) -> {args.output}"
    )


def run_merge(args: argparse.Namespace) -> None:
    from convirt.retrieval import merge_index_folders

    check_index_output(args.output, *args.inputs)
    merged = merge_index_folders(args.inputs, args.output)
    print(f"merged {len(args.inputs)} indexes into {merged.info.count} x {merged.info.dim} -> {args.output}")
