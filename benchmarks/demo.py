"""The demo's results: runs `make demo` and writes what it measured into BENCHMARKS.md.

Every figure of the ``demo`` section is read from the files that run wrote
(`artifacts/demo/zeroshot/metrics.json`, `retrieval.json`, `metrics.json`, `timings.tsv`), at the
commit and with the config named in the section, with the phantom bench leaderboard the demo ends
with and whether it kept within its 10-minute budget. `python benchmarks/demo.py` (about 6 minutes
on 2 CPU cores without native bf16; simulate that CPU on one with native bf16 with
`ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import yaml
from _markdown import commit, machine_line, write_section
from _recipe import CI_LEVEL

from convirt.cli.report import read_timings
from convirt.zeroshot import load_zeroshot_folder

ROOT = Path(__file__).resolve().parents[1]
SECTION = "demo"
BUDGET_S = 600  # the demo's budget: 10 minutes on 2 CPU cores, install excluded
DEMO = ROOT / "artifacts" / "demo"
METHODS = (
    ("descriptors", "descriptor prompts (Xplainer)"),
    ("names", "finding-name prompts"),
    ("ensemble", "template ensemble"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    start = time.perf_counter()
    subprocess.run(["make", "demo"], cwd=ROOT, check=True)
    total = time.perf_counter() - start
    zeroshot = load_zeroshot_folder(DEMO / "zeroshot").metrics
    retrieval = json.loads((DEMO / "retrieval.json").read_text(encoding="utf-8"))
    summary = json.loads((DEMO / "metrics.json").read_text(encoding="utf-8"))
    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    manifest = json.loads((DEMO / "shards" / "manifest.json").read_text(encoding="utf-8"))
    stages = read_timings(str(DEMO / "timings.tsv"))  # every timed stage, the bench after the report included
    names = list(zeroshot["positives"])
    model, trainer = config["model"], config["trainer"]
    lines = [
        "## Demo (`make demo`)",
        "",
        f"`python benchmarks/demo.py` on {time.strftime('%Y-%m-%d')} at commit {commit()} ({machine_line()}; "
        f"the fit chose precision {summary['training']['precision']}). `make demo` took {total:.0f} s, install "
        "excluded; its stages: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in stages.items()) + ". "
        f"`configs/demo.yaml`: model `{model['model_name']}`, {model.get('freeze_image_groups', 0)} image groups and "
        f"{model.get('freeze_text_layers', 0)} text layers frozen, {trainer['max_epochs']} epochs, trained on "
        f"{manifest['splits']['train']['samples']:,} phantom pairs; evaluated on the held-out test split, "
        f"{zeroshot['samples']} images (AUROC with {CI_LEVEL:.0%} bootstrap CIs in "
        "`artifacts/demo/zeroshot/metrics.json`).",
        "",
        "| finding | positives | " + " | ".join(f"AUROC, {label}" for _, label in METHODS) + " |",
        "|---|---:|" + "---:|" * len(METHODS),
    ]
    for name in names:
        lines.append(
            f"| {name} | {zeroshot['positives'][name]} | "
            + " | ".join(f"{zeroshot[method]['auroc'][name]:.3f}" for method, _ in METHODS)
            + " |"
        )
    lines.append(
        "| **mean** | | " + " | ".join(f"**{zeroshot[method]['mean_auroc']:.3f}**" for method, _ in METHODS) + " |"
    )
    recall = retrieval.get("image_text", {})

    def recalls(direction: str) -> str:
        return " / ".join(f"{recall[direction][f'recall_at_{k}']:.3f}" for k in (1, 5, 10))

    k = next(int(key.rsplit("_", 1)[1]) for key in retrieval if key.startswith("precision_at_"))
    patients = "left out" if retrieval.get("same_patient_excluded") else "kept"
    lines += [
        "",
        f"Image-to-image retrieval (FAISS `{retrieval['factory']}`, the {retrieval['indexed']} test images indexed, "
        f"{retrieval['queries']} queries, the query's patient {patients}): label precision@{k} "
        f"**{retrieval[f'precision_at_{k}']:.3f}** (mAP@{k} {retrieval[f'map_at_{k}']:.3f}); a neighbour counts "
        "when its finding set equals the query's."
        + (
            f" Image->text R@1/5/10 {recalls('image_to_text')}, text->image {recalls('text_to_image')}."
            if recall
            else ""
        ),
    ]
    board = DEMO / "bench" / "leaderboard.md"
    if board.is_file():
        lines += [
            "",
            f"The demo ends with `convirt bench --suite phantom` ({stages['bench']:.0f} s) on the "
            "untrained towers (`demo-effnet-minilm`) and the demo's checkpoint; its leaderboard "
            "(`artifacts/demo/bench/leaderboard.md`):",
            "",
            board.read_text(encoding="utf-8").strip(),
        ]
    lines += [
        "",
        f"Budget: {BUDGET_S / 60:.0f} minutes, install excluded: "
        + (f"met ({total / 60:.1f} min)." if total <= BUDGET_S else f"NOT met ({total / 60:.1f} min)."),
    ]
    write_section(Path(args.output), SECTION, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
