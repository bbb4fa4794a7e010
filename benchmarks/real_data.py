"""Real-data measurements: train on ../shared/data/covid-pairs, evaluate on the NIH part of cxr-eval.

For each seed, `convirt fit --config configs/covid_pairs.yaml` (the demo towers trained on the 529
covid-pairs images and notes); beside it the untrained pretrained towers and a random
initialisation. Each checkpoint then embeds the NIH ChestX-ray14 images of cxr-eval (Pneumonia vs
No Finding, 476 images, 341 patients), and image-to-image search is scored with label
precision@5 / mAP@5 (a neighbour is relevant when its Pneumonia label equals the query's; the
query patient's own images are left out) and a 10-neighbour kNN vote AUROC.

Everything runs through the `convirt` command, as a user would. Writes the ``real-data``
section of BENCHMARKS.md. `python benchmarks/real_data.py --seeds 0 1 2`. It also runs
`convirt zeroshot --descriptors pneumonia` (three scoring methods, bootstrap CIs) and `convirt
probe` (patient-grouped 5-fold linear and kNN probes) on the same images for every checkpoint.
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from pathlib import Path

import yaml
from _cache import cached_commands, mark_done, recorded_commit, reusable
from _markdown import commit, machine_line, shared_data_parser, trained_precisions, write_section
from _openi_text import openi_stand_in, read_test_reports
from _process import convirt
from _recipe import CI_LEVEL, baseline_checkpoint, ensure_recipe_text_model, real_data_inputs, recipe_key, write_recipe
from dev_recipes import SEEDS as DEV_SEEDS
from dev_recipes import VARIANTS as DEV_VARIANTS

ROOT = Path(__file__).resolve().parents[1]
SECTION = "real-data"
NIH = "source=nih-chestxray14"
K, KNN = 5, 10  # precision@K and mAP@K of image search; neighbours of the kNN vote
CHANCE = 0.5  # the AUROC of a random score
PROBES = (("linear", 1.0), ("linear", 0.1), ("knn", 1.0))  # the probe columns: kind, fraction of the labels
# Evaluated beside the shipped recipe (each as it trained, whatever configs/covid_pairs.yaml now says):
# the recipe at 10 epochs, and before that with the batch-norm statistics updated (both chosen against
# on the Kermany development set of benchmarks/dev_recipes.py), and the development set's best
# candidate for Xplainer descriptors, named before any NIH run of it.
TEN = "trained 10 epochs, batch-norm statistics kept"
PREVIOUS = "trained 10 epochs, batch-norm statistics updated (the first recipe)"
LIT = "trained 10 epochs, image trunk locked (LiT, general text tower)"
OTHERS = {
    TEN: ("ten", {"model.freeze_image_norm": True, "trainer.max_epochs": 10}),
    PREVIOUS: ("prev", {"model.freeze_image_norm": False, "trainer.max_epochs": 10}),
    LIT: ("lit", next(overrides for folder, _, overrides in DEV_VARIANTS.values() if folder == "lit")),
}


def train(
    seed: int, work: Path, shards: Path, shared: Path, folder: str = "seed", overrides: dict[str, object] | None = None
) -> Path:
    """`convirt fit` on covid-pairs with one seed; reused when made at this commit with this config.

    ``overrides`` (``section.key: value``) change the shipped recipe, in the run folder ``folder-SEED``.
    """
    run = work / f"{folder}-{seed}"
    checkpoint = run / "checkpoints" / "last.ckpt"
    key = recipe_key(shards, seed, overrides)
    if reusable(run, key):
        return checkpoint
    ensure_recipe_text_model(shared)  # made once, shared by the seeds
    path = write_recipe(run, shards, seed, overrides)
    start = time.perf_counter()
    convirt("fit", "--config", str(path))
    (run / "train_seconds.txt").write_text(f"{time.perf_counter() - start:.0f}\n")
    mark_done(run, key)
    return checkpoint


def _evaluation(checkpoint: Path, labels: Path, out: Path, result: str, *commands: list[str]) -> dict:
    """Run ``commands`` into ``out`` unless it holds their result for this checkpoint, labels and commit."""
    return cached_commands(out, result, commands, convirt, checkpoint=checkpoint, labels=labels)


def retrieval(checkpoint: Path, labels: Path, out: Path) -> dict:
    """Embed the NIH images, index them exactly, score image-to-image search and kNN diagnosis."""
    out = out / "retrieval"
    return _evaluation(
        checkpoint,
        labels,
        out,
        "retrieval.json",
        [
            "embed",
            "--checkpoint",
            str(checkpoint),
            "--data",
            str(labels),
            "--where",
            NIH,
            "--output",
            str(out / "embeddings"),
        ],
        ["index", "build", "--embeddings", str(out / "embeddings"), "--output", str(out / "index")],
        [
            "index",
            "eval",
            "--index",
            str(out / "index"),
            "-k",
            str(K),
            "--findings",
            "Pneumonia",
            "--knn",
            str(KNN),
            "--output",
            str(out / "retrieval.json"),
        ],
    )


def zeroshot(checkpoint: Path, labels: Path, out: Path) -> dict:
    """`convirt zeroshot --descriptors pneumonia` on the NIH images (all three scoring methods, CIs)."""
    out = out / "zeroshot"
    return _evaluation(
        checkpoint,
        labels,
        out,
        "metrics.json",
        [
            "zeroshot",
            "--checkpoint",
            str(checkpoint),
            "--descriptors",
            "pneumonia",
            "--data",
            str(labels),
            "--where",
            NIH,
            "--labels",
            "Pneumonia",
            "--output",
            str(out),
        ],
    )


def probe(checkpoint: Path, labels: Path, out: Path) -> dict:
    """`convirt probe`: patient-grouped linear and kNN probes at the fractions of PROBES."""
    out = out / "probe"
    fractions = sorted({str(fraction) for _, fraction in PROBES})
    return _evaluation(
        checkpoint,
        labels,
        out,
        "metrics.json",
        [
            "probe",
            "--checkpoint",
            str(checkpoint),
            "--data",
            str(labels),
            "--where",
            NIH,
            "--labels",
            "Pneumonia",
            "--fractions",
            *fractions,
            "--output",
            str(out),
        ],
    )


def normal_pairs(pairs: Path) -> tuple[int, int]:
    """Images of the pair table labelled No Finding, and all its images."""
    with open(pairs, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return sum("No Finding" in (row.get("labels") or "") for row in rows), len(rows)


def _auroc(metrics: dict) -> tuple[float, float, float]:
    finding = metrics["findings"]["Pneumonia"]
    return finding["auroc"], finding["auroc_ci"][0], finding["auroc_ci"][1]


def _with_ci(runs: list[tuple[float, float, float]]) -> str:
    """One run: AUROC [CI]; several: mean of the AUROCs and of the CI bounds, with the runs listed."""
    mean = [statistics.mean(r[i] for r in runs) for i in range(3)]
    text = f"{mean[0]:.3f} [{mean[1]:.3f}, {mean[2]:.3f}]"
    return text if len(runs) == 1 else text + " (" + ", ".join(f"{r[0]:.3f}" for r in runs) + ")"


def _mean(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    parser = shared_data_parser(__doc__, ROOT / "artifacts" / "real-data")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()

    shared, work = Path(args.shared), Path(args.work)
    if (inputs := real_data_inputs(shared)) is None:
        return
    pairs, labels = inputs
    shards = work / "covid-pairs-shards"
    if not (shards / "manifest.json").is_file():
        convirt("shards", "--input", str(pairs), "--output", str(shards), "--workers", "2", "--image-size", "256")

    checkpoints: dict[str, list[tuple[Path, Path]]] = {
        "random init": [],
        "pretrained towers, untrained": [],
        "trained on covid-pairs": [],
        **{name: [] for name in OTHERS},
    }
    for seed in args.seeds:
        checkpoints["random init"].append((baseline_checkpoint(work, False, seed), work / f"eval-random-{seed}"))
        checkpoints["trained on covid-pairs"].append((train(seed, work, shards, shared), work / f"eval-trained-{seed}"))
        for name, (folder, overrides) in OTHERS.items():
            checkpoints[name].append(
                (train(seed, work, shards, shared, folder, overrides), work / f"eval-{folder}-{seed}")
            )
    checkpoints["pretrained towers, untrained"].append((baseline_checkpoint(work, True), work / "eval-untrained"))
    results = {name: [retrieval(c, labels, out) for c, out in runs] for name, runs in checkpoints.items()}
    zero = {name: [zeroshot(c, labels, out) for c, out in runs] for name, runs in checkpoints.items()}
    probes = {name: [probe(c, labels, out) for c, out in runs] for name, runs in checkpoints.items()}

    runs = [work / f"{folder}-{seed}" for folder in ("seed", "ten", "prev", "lit") for seed in args.seeds]
    trained_at = sorted({recorded_commit(run) for run in runs})
    minutes = [
        float((run / "train_seconds.txt").read_text()) / 60 for run in runs if (run / "train_seconds.txt").is_file()
    ]
    trained = [checkpoint for runs in checkpoints.values() for checkpoint, _ in runs]
    machine = f"{machine_line()}; trained with precision {trained_precisions(trained)}"
    recipe = yaml.safe_load((ROOT / "configs" / "covid_pairs.yaml").read_text(encoding="utf-8"))
    train_images = json.loads((shards / "manifest.json").read_text(encoding="utf-8"))["splits"]["train"]["samples"]
    first = zero["trained on covid-pairs"][0]
    samples, positives = first["samples"], first["positives"]["Pneumonia"]
    patients, folds = probes["trained on covid-pairs"][0]["patients"], probes["trained on covid-pairs"][0]["folds"]
    share = positives / samples
    chance = share**2 + (1 - share) ** 2  # a neighbour drawn at random shares the query's label
    normals, pair_count = normal_pairs(pairs)
    lines = [
        "## Real data: image-to-image search on NIH ChestX-ray14 (cxr-eval)",
        "",
        f"`python benchmarks/real_data.py --seeds {' '.join(map(str, args.seeds))}` on "
        f"{time.strftime('%Y-%m-%d')} ({machine}). Model `demo-effnet-minilm`; training: `configs/covid_pairs.yaml` "
        f"({recipe['trainer']['max_epochs']} epochs on the {train_images} training images of "
        "../shared/data/covid-pairs; "
        "the text tower is MiniLM pretrained on the Open-i reports by `convirt pretrain-text --config "
        "configs/openi_text.yaml` and locked, so only its projection head trains; the image trunk's batch-norm layers "
        "keep their pretrained statistics). Beside it, as they were trained: "
        + "; ".join(
            f'"{name}" ({", ".join(f"{k} = {v}" for k, v in overrides.items())})'
            for name, (_, overrides) in OTHERS.items()
        )
        + f" (the development set's best candidate for Xplainer descriptors, mean of {len(DEV_SEEDS)} seeds, "
        "named before it was run on these images). Evaluation: the "
        f"{samples} NIH images of ../shared/data/cxr-eval ({positives} Pneumonia, {samples - positives} No Finding, "
        f"{patients} patients), exact (Flat) index, label = Pneumonia or not, the query patient's images left out. "
        f"Chance precision@{K} (a neighbour drawn at random) is {chance:.3f}. "
        "Mean ± standard deviation over seeds where there are several. "
        f"Checkpoints trained with the code of commit(s) {', '.join(trained_at) or 'unknown'} (results are reused "
        "only when made at the same commit and config), "
        f"{', '.join(f'{m:.0f}' for m in minutes)} min each on this machine (the table's trained rows in order); "
        f"evaluated at commit {commit()}.",
        "",
        f"| model | seeds | precision@{K} | mAP@{K} | kNN ({KNN}) AUROC, Pneumonia |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, runs in results.items():
        lines.append(
            f"| {name} | {len(runs)} | {_mean([r[f'precision_at_{K}'] for r in runs])} | "
            f"{_mean([r[f'map_at_{K}'] for r in runs])} | "
            f"{_mean([r['knn']['auroc']['Pneumonia'] for r in runs])} |"
        )
    columns = [f"{kind} probe ({fraction:.0%})" for kind, fraction in PROBES]
    lines += [
        "",
        f"Zero-shot diagnosis of Pneumonia vs No Finding on the same {samples} images with the shipped `pneumonia` "
        f"descriptor set (written before any measurement, not tuned on this set): AUROC [{CI_LEVEL:.0%} bootstrap CI, "
        f"{first['bootstrap']:,} stratified replicates]. Xplainer = the descriptor observations; CheXzero-style = the "
        'pair "There is pneumonia." vs "Normal chest radiograph."; ensemble = template ensembles over the name and '
        "synonyms. Probes (`convirt probe`): on the frozen image-trunk features (projection head removed, as in "
        f"ConVIRT's protocol), {folds} patient-grouped folds, pooled out-of-fold AUROC; the linear probe is a logistic "
        "regression on standardised features with C chosen by an inner patient-grouped cross-validation of "
        "each training part; a fraction of each fold's training labels as named. With several seeds: the mean AUROC "
        "and mean CI bounds, then each seed's AUROC.",
        "",
        "| model | zero-shot, Xplainer descriptors | zero-shot, CheXzero-style pair | zero-shot, template ensemble | "
        + " | ".join(columns)
        + " |",
        "|---|---|---|---|" + "---|" * len(PROBES),
    ]

    def probe_auroc(metrics: dict, kind: str, fraction: float) -> tuple[float, float, float]:
        row = next(p for p in metrics["probes"] if p["probe"] == kind and p["fraction"] == fraction)
        return _auroc(row)

    for name in checkpoints:
        cells = [_with_ci([_auroc(z[method]) for z in zero[name]]) for method in ("descriptors", "names", "ensemble")]
        cells += [_with_ci([probe_auroc(p, kind, fraction) for p in probes[name]]) for kind, fraction in PROBES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if (shared / "openi-reports" / "NLMCXR_reports.tgz").is_file():
        reports = read_test_reports(ensure_recipe_text_model(shared))
        text_side = [openi_stand_in(c, reports, out) for c, out in checkpoints["trained on covid-pairs"]]
        lines += [
            "",
            "The text side alone: the trained checkpoints' text tower, scored on held-out Open-i "
            "reports in the same joint space (findings texts indexed airspace disease vs normal, "
            "`benchmarks/_openi_text.py`), gives AUROC "
            + ", ".join(
                f"{method} {_mean([t[key] for t in text_side])}"
                for method, key in (("descriptors", "descriptors"), ("pair", "names"), ("ensemble", "ensemble"))
            )
            + f". Of the {pair_count} covid-pairs images, {normals} are labelled No Finding: what the image side "
            "has to learn a normal study from.",
        ]
    if checkpoints[LIT]:
        lit = [_auroc(z["descriptors"]) for z in zero[LIT]]
        low, high = statistics.mean(r[1] for r in lit), statistics.mean(r[2] for r in lit)
        same_probes = all(
            probe_auroc(a, kind, fraction) == probe_auroc(b, kind, fraction)
            for a in probes[LIT]
            for b in probes["pretrained towers, untrained"]
            for kind, fraction in PROBES
        )
        lines += [
            "",
            f'The "{LIT}" row is there because it was the best candidate for the Xplainer descriptors on the '
            'Kermany pediatric development set ("dev-recipes" section below). Here its Xplainer AUROC has a mean '
            f"CI of [{low:.3f}, {high:.3f}], which {'includes' if low <= CHANCE <= high else 'excludes'} chance "
            f"({CHANCE:.1f}). "
            f"Its probes {'equal' if same_probes else 'differ from'} the untrained ones"
            + (" (its image trunk is the untrained one)." if same_probes else "."),
        ]
    write_section(Path(args.output), SECTION, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
