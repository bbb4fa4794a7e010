"""`convirt bench --suite shared` over five kinds of model, and its wall time against the separate commands.

Models: random init (the demo architecture, no pretrained weights), the pretrained towers untrained
(`demo-effnet-minilm`, a registry source), the covid-pairs recipe (`configs/covid_pairs.yaml`,
seeds 0, 1 and 2; each checkpoint is audited for leakage against the shards it records) and the
demo model (`make demo`'s, trained on phantoms). Every protocol of the suite runs with the bench's
CIs. Then the same zero-shot, kNN, retrieval and linear-probe results on the NIH task are computed
twice from cold, by one `convirt bench` and by the separate commands (`zeroshot`, `probe`, `embed`,
`index build`, `index eval`), for the untrained towers and the recipe's seed 0, and both wall
times are reported (goal: bench at most 0.5x, from embedding each image once).
Writes the ``bench-shared`` section of BENCHMARKS.md. `python benchmarks/bench_shared.py`: about two
hours on 2 idle CPU cores (three 20-epoch trainings, the demo's training, six models' embeddings,
probes and fine-tuning). `--quick` checks the script end to end in minutes (1-epoch trainings, one
recipe seed, 50 bootstrap replicates) and writes its section to `--output` as given (use a scratch file).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import yaml
from _markdown import commit, machine_line, shared_data_parser, trained_precisions, write_section
from _process import convirt
from _recipe import ROOT, baseline_checkpoint, ensure_recipe_text_model, write_recipe

from convirt.bench.runner import model_label

SECTION = "bench-shared"
SHARDS = ROOT / "artifacts" / "covid-pairs" / "shards"  # where the shared suite reads covid-pairs' test split
NIH = ["--data", "../shared/data/cxr-eval/labels.csv", "--where", "source=nih-chestxray14", "--labels", "Pneumonia"]


def recipe_checkpoint(work: Path, seed: int, shared: Path, epochs: int | None) -> Path:
    """The covid-pairs recipe trained with ``seed`` (kept in ``work`` and reused when there)."""
    run = work / f"recipe-{seed}" if epochs is None else work / f"recipe-{seed}-e{epochs}"
    checkpoint = run / "checkpoints" / "last.ckpt"
    if not checkpoint.is_file():
        ensure_recipe_text_model(shared)
        overrides = {"trainer.max_epochs": epochs} if epochs is not None else None
        config = write_recipe(run, SHARDS, seed, overrides)
        start = time.perf_counter()
        convirt("fit", "--config", str(config))
        (run / "train_seconds.txt").write_text(f"{time.perf_counter() - start:.0f}\n")
    return checkpoint


def demo_checkpoint(work: Path, epochs: int | None) -> Path:
    """`make demo`'s model: its own if it is there, else trained here with the demo's commands."""
    made = ROOT / "artifacts" / "demo" / "checkpoints" / "last.ckpt"
    if made.is_file() and epochs is None:
        return made
    demo = work / "demo"
    checkpoint = demo / "checkpoints" / "last.ckpt"
    if not checkpoint.is_file():
        convirt("phantom", "--output", str(demo / "phantom"), "--num-samples", "2400", "--seed", "0", "--workers", "2")
        convirt(
            "shards", "--input", str(demo / "phantom" / "rows.csv"), "--output", str(demo / "shards"),
            "--image-size", "192", "--shard-size", "500", "--test-fraction", "0.2", "--workers", "2",
        )  # fmt: skip
        config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text(encoding="utf-8"))
        config["data"]["shards"] = str(demo / "shards")
        config["trainer"]["default_root_dir"] = str(demo / "fit")
        config["trainer"]["logger"]["init_args"]["save_dir"] = str(demo / "fit")
        config["trainer"]["callbacks"][0]["init_args"]["dirpath"] = str(demo / "checkpoints")
        if epochs is not None:
            config["trainer"]["max_epochs"] = epochs
        (demo / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
        convirt("fit", "--config", str(demo / "config.yaml"))
    return checkpoint


def quick_suite(work: Path) -> str:
    """The shared suite with one label fraction and 1-epoch fine-tuning, for ``--quick``."""
    from convirt.bench.suite import SUITES

    spec = yaml.safe_load((SUITES / "shared.yaml").read_text(encoding="utf-8"))
    for task in spec["tasks"]:
        protocols = task["protocols"]
        if "probe" in protocols:
            protocols["probe"] = {**protocols["probe"], "fractions": [1.0]}
        if "finetune" in protocols:
            protocols["finetune"] = {"fractions": [1.0], "max_epochs": 1}
    path = work / "shared-quick.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return str(path)


def timed(*args: str) -> float:
    start = time.perf_counter()
    convirt(*args, quiet=True)
    return time.perf_counter() - start


def compare_with_commands(models: dict[str, str], work: Path, bootstrap: int) -> dict[str, dict[str, float]]:
    """Cold wall times of one `convirt bench` and of the separate commands for the same NIH results."""
    suite = work / "nih-commands.yaml"
    suite.write_text(
        json.dumps(
            {
                "name": "nih-commands",
                "tasks": [
                    {
                        "name": "nih-pneumonia",
                        "data": "../shared/data/cxr-eval/labels.csv",
                        "where": {"source": "nih-chestxray14"},
                        "labels": ["Pneumonia"],
                        "descriptors": "pneumonia",
                        "protocols": {
                            "zeroshot": {},
                            "knn": {"k": 10},
                            "retrieval": {"k": 5},
                            "probe": {"fractions": [1.0], "probes": ["linear"]},
                        },
                    }
                ],
            }
        )
    )  # JSON is YAML; the protocols keep their order
    times: dict[str, dict[str, float]] = {}
    for name, source in models.items():
        out = work / "compare" / name
        shutil.rmtree(out, ignore_errors=True)
        bench = timed(
            "bench", "--suite", str(suite), "--model", source, "--output", str(out / "bench"),
            "--bootstrap", str(bootstrap), "--no-audit",  # the same results: the commands audit nothing
        )  # fmt: skip
        boot = ["--bootstrap", str(bootstrap)]
        commands = timed(
            "zeroshot", "--model", source, "--descriptors", "pneumonia", *NIH, *boot, "--output", str(out / "zs")
        )
        commands += timed(
            "probe",
            "--model",
            source,
            *NIH,
            "--fractions",
            "1.0",
            "--probes",
            "linear",
            *boot,
            "--output",
            str(out / "probe"),
        )
        commands += timed("embed", "--model", source, *NIH[:4], "--output", str(out / "emb"))
        commands += timed("index", "build", "--embeddings", str(out / "emb"), "--output", str(out / "index"))
        commands += timed(
            "index", "eval", "--index", str(out / "index"), "-k", "5", "--findings", "Pneumonia", "--knn", "10",
            "--output", str(out / "retrieval.json"),
        )  # fmt: skip
        times[name] = {"bench": bench, "commands": commands}
    return times


def label_efficiency(rows: list[dict], names: dict[str, str]) -> list[str]:
    """Per task with probes or fine-tuning: a table of models x (protocol, label fraction) mean AUROC."""
    from convirt.bench.leaderboard import format_cell

    found = {
        (r["model"], r["task"], r["metric"]): r for r in rows if r["seed"] == 0 and r["metric"].endswith("/mean_auroc")
    }
    columns = [(kind, fraction) for kind in ("linear", "finetune") for fraction in ("0.01", "0.1", "1")]
    lines: list[str] = []
    for task in sorted({r["task"] for r in rows if r["protocol"] in ("probe", "finetune")}):
        lines += [
            f"**{task}**",
            "",
            "| model | " + " | ".join(f"{kind} {float(f):.0%}" for kind, f in columns) + " |",
            "|---|" + "---:|" * len(columns),
        ]
        for label, name in names.items():
            cells = [format_cell(found.get((label, task, f"{kind}@{f}/mean_auroc"))) for kind, f in columns]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def shared_models(doc: str) -> tuple[argparse.Namespace, dict[str, str], int] | None:
    """The options of a benchmark over the shared bench's six models, and the models (made or reused:
    random init, untrained towers, the covid-pairs recipe per seed, the demo model) with the bootstrap
    to use; None, said, when ../shared/data is absent."""
    parser = shared_data_parser(doc, ROOT / "artifacts" / "bench-shared")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the covid-pairs recipe")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="1-epoch trainings, one seed, 50 replicates: a check")
    args = parser.parse_args()
    shared, work = Path(args.shared), Path(args.work)
    if not (shared / "cxr-eval" / "labels.csv").is_file() or not (shared / "covid-pairs" / "pairs.csv").is_file():
        print(f"real data not found under {shared} (see ../shared/data/README.md); nothing measured")
        return None
    epochs, seeds, bootstrap = (1, args.seeds[:1], 50) if args.quick else (None, args.seeds, args.bootstrap)
    if not (SHARDS / "manifest.json").is_file():
        pairs = str(shared / "covid-pairs" / "pairs.csv")
        convirt("shards", "--input", pairs, "--output", str(SHARDS), "--workers", "2", "--image-size", "256")
    models = {
        "random init": str(baseline_checkpoint(work, pretrained=False)),
        "pretrained towers, untrained": "demo-effnet-minilm",
        **{f"covid-pairs recipe, seed {s}": str(recipe_checkpoint(work, s, shared, epochs)) for s in seeds},
        "demo model (phantoms)": str(demo_checkpoint(work, epochs)),
    }
    return args, models, bootstrap


def main() -> None:
    found = shared_models(__doc__)
    if found is None:
        return
    args, models, bootstrap = found
    work, seeds = Path(args.work), (args.seeds[:1] if args.quick else args.seeds)
    shutil.rmtree(work / "bench", ignore_errors=True)  # the suite's time below is from a cold cache
    start = time.perf_counter()
    command = ["bench", "--suite", quick_suite(work) if args.quick else "shared", "--data-root", str(ROOT)]
    command += ["--output", str(work / "bench")]
    for source in models.values():
        command += ["--model", source]
    convirt(*command, "--bootstrap", str(bootstrap))
    bench_seconds = time.perf_counter() - start
    compared = compare_with_commands(
        {
            "untrained": models["pretrained towers, untrained"],
            "recipe-s0": models[f"covid-pairs recipe, seed {seeds[0]}"],
        },
        work,
        bootstrap,
    )

    names = {model_label(source): name for name, source in models.items()}
    board = (work / "bench" / "leaderboard.md").read_text(encoding="utf-8")
    for label, name in names.items():
        board = board.replace(f"| {label} |", f"| {name} |")  # in each task's table
    rows = [json.loads(line) for line in (work / "bench" / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    leakage = [row for row in rows if row["protocol"] == "leakage"]
    leaked = sorted({(r["model"], r["task"], int(r["value"])) for r in leakage if r["metric"] == "leaked"})
    trained = [Path(s) for s in models.values() if s.endswith(".ckpt")]
    lines = [
        "## `convirt bench --suite shared`: five kinds of model on what ../shared/data holds",
        "",
        f"{machine_line()}; models trained with precision {trained_precisions(trained)}; commit {commit()}"
        + (" (a --quick check: 1-epoch trainings, 50 replicates; not a result)" if args.quick else ""),
        "",
        "Command: `python benchmarks/bench_shared.py` (it runs `convirt bench --suite shared --data-root . "
        + " ".join(f"--model {source}" for source in models.values())
        + f" --bootstrap {bootstrap}`). Each cell: the protocol's headline metric and its 95% bootstrap CI "
        "(AUROC CIs resample images; retrieval and recall CIs resample queries). kermany-pneumonia is the "
        'covid-pairs recipe\'s development set (BENCHMARKS.md, "dev recipes"), so its recipe rows are not a '
        "held-out test; nih-pneumonia is. The random-init and untrained rows are the floor every trained row "
        "must clear.",
        "",
        board.rstrip(),
        "",
        "Label efficiency: mean AUROC (95% CI) of the linear probe and of fine-tuning at 1%, 10% and 100% "
        "of each task's training labels (patient-grouped folds; fine-tuning early-stopped on a validation fold):",
        "",
        *label_efficiency(rows, names),
        f"The whole suite over the {len(models)} models took {bench_seconds / 60:.1f} min from a cold cache. "
        "Leakage audit of each `convirt fit` checkpoint (the recipe seeds and the demo model) against the "
        "shards it records (copies of test images in its training split): "
        + (", ".join(f"{model} / {task}: {count}" for model, task, count in leaked) or "no checkpoint audited")
        + ".",
        "",
        "Zero-shot, kNN, retrieval and the linear probe on nih-pneumonia, from cold, one bench run against "
        "the separate commands (`zeroshot`, `probe`, `embed`, `index build`, `index eval`; same bootstrap):",
        "",
        "| model | `convirt bench` | separate commands | ratio |",
        "|---|---:|---:|---:|",
        *(
            f"| {name} | {t['bench']:.1f} s | {t['commands']:.1f} s | {t['bench'] / t['commands']:.2f}x |"
            for name, t in compared.items()
        ),
    ]
    write_section(Path(args.output), SECTION, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
