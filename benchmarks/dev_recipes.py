"""Recipe candidates across seeds on a development set of real radiographs that is not the evaluation set.

The held-out split of covid-pairs (`heldout_recipes.py`) has 3 normal images, so it cannot say
whether a recipe separates pneumonia from normal images. The Kermany pediatric part of cxr-eval
can: 618 images (387 pneumonia, 231 normal) from another hospital, country and age group than
the NIH part on which the real-data result is reported (`real_data.py`), no patient shared with
either set. It is used here as a development set, and only for choosing between recipes; NIH
images are not read.

Each variant of `configs/covid_pairs.yaml` (10 epochs unless it says otherwise; shard options in SHARDS) is
trained with seeds 0, 1 and 2, and scored by `convirt zeroshot --descriptors pneumonia` on the Kermany
images (the three methods, AUROC), by a patient-grouped 5-fold linear probe on their image-trunk
features, by image<->text recall on the covid-pairs test split (mean of R@5 and R@10 both ways) and by the Open-i text
stand-in (`_openi_text.py`). Writes the ``dev-recipes`` section of BENCHMARKS.md.
`python benchmarks/dev_recipes.py`: 36 trainings (12 variants x 3 seeds) and their evaluations, hours on 2 CPU
cores (one 10-epoch training with its evaluations took about 21 minutes on 2026-12-02, sharing the 2 cores with
another job). Each run's figures are kept in `benchmarks/results/dev-recipes/` (one small JSON per variant and seed,
keyed on the commit; `--results` elsewhere), and the section is written once all of them are there, so the work can
span sessions: run it from a clone pinned at the commit the kept results name (`git clone . ../bench && git -C
../bench checkout COMMIT`, `make install` there), with `--results` pointing at this tree's folder, and commit what it
adds; a run killed midway loses only the run in progress. Checkpoints and evaluation folders stay in `--work`.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from _cache import cached_commands, load_result, mark_done, reusable, save_result
from _markdown import commit, machine_line, shared_data_parser, write_section
from _openi_text import openi_stand_in, read_test_reports
from _recipe import baseline_checkpoint, ensure_recipe_text_model, real_data_inputs, recipe_key, write_recipe
from heldout_recipes import OPENI_TEXT, convirt, heldout

ROOT = Path(__file__).resolve().parents[1]
SECTION = "dev-recipes"
RESULTS = ROOT / "benchmarks" / "results" / SECTION  # one small JSON per run, kept in git
KERMANY = "source=kermany-pediatric-pneumonia-test (224px)"
SEEDS = (0, 1, 2)
_GENERAL = {
    "model.text_model_path": None,
    "model.lock_text_tower": False,
    "model.freeze_text_layers": 3,
    "model.text_dropout": False,
}
# How each variant trained, whatever configs/covid_pairs.yaml now says (it took norms kept and 20 epochs from here).
_PREVIOUS = {"model.freeze_image_norm": False, "trainer.max_epochs": 10}
_KEPT = {"model.freeze_image_norm": True, "trainer.max_epochs": 10}
# Lightning's own weight averaging: every checkpoint holds the average (half-life ~70 of the ~260 steps).
_EMA = {"class_path": "lightning.pytorch.callbacks.EMAWeightAveraging", "init_args": {"decay": 0.99}}
# Open-i's training reports indexed normal, drawn as extra negatives of every image (the recipe's text shards).
_NEGATIVES = {
    "data.negative_texts": str(OPENI_TEXT / "shards"),
    "data.negative_labels": ["No Finding"],
    "data.negatives_per_batch": 64,
}
# The covid-pairs shard folders the variants train on (shards-NAME): `convirt shards` options beyond the recipe's.
SHARDS = {"auto": ["--text", "auto"], "imaging": ["--text", "imaging"], "frontal": ["--views", "frontal"]}
# name: (folder, shard folder of SHARDS, overrides of configs/covid_pairs.yaml)
VARIANTS: dict[str, tuple[str, str, dict[str, object]]] = {
    "report-pretrained text tower locked, image tower trained, 10 epochs (the first recipe)": (
        "recipe",
        "auto",
        _PREVIOUS,
    ),
    "the first recipe on the notes' imaging sentences (`--text imaging`)": ("imaging", "imaging", _PREVIOUS),
    "report-pretrained text tower locked, image trunk locked": (
        "both-locked",
        "auto",
        {**_PREVIOUS, "model.lock_image_tower": True},
    ),
    "general text tower trained, image trunk locked (LiT)": (
        "lit",
        "auto",
        {**_GENERAL, **_PREVIOUS, "model.lock_image_tower": True},
    ),
    "the first recipe with the image trunk's batch-norm statistics kept (`model.freeze_image_norm`)": (
        "norm-frozen",
        "auto",
        _KEPT,
    ),
    "the same with the whole image trunk trained (`freeze_image_groups: 0`)": (
        "norm-frozen-all",
        "auto",
        {**_KEPT, "model.freeze_image_groups": 0},
    ),
    "the same (statistics kept) for 20 epochs: the recipe": (
        "norm-frozen-20",
        "auto",
        {**_KEPT, "trainer.max_epochs": 20},
    ),
    "the same for 30 epochs": ("norm-frozen-30", "auto", {**_KEPT, "trainer.max_epochs": 30}),
    f"the recipe (20 epochs) evaluated on an exponential moving average of its weights (decay "
    f"{_EMA['init_args']['decay']})": (
        "ema-20",
        "auto",
        {**_KEPT, "trainer.max_epochs": 20, "trainer.callbacks": [_EMA]},
    ),
    "the recipe (20 epochs) with the ConVIRT loss, a case's repeated description a positive of each of its images": (
        "convirt-repeated-20",
        "auto",
        {**_KEPT, "trainer.max_epochs": 20, "model.loss": "convirt", "model.repeated_reports_as_positives": True},
    ),
    "the recipe (20 epochs) on the frontal radiographs only (`--views frontal`: lateral films and films of "
    "unknown view left out)": ("frontal-20", "frontal", {**_KEPT, "trainer.max_epochs": 20}),
    f"the recipe (20 epochs) with Open-i's normal reports as text-only negatives "
    f"({_NEGATIVES['data.negatives_per_batch']} a batch, `data.negative_texts`)": (
        "negatives-20",
        "auto",
        {**_KEPT, "trainer.max_epochs": 20, **_NEGATIVES},
    ),
}
METHODS = ("descriptors", "names", "ensemble")
RECALL_KS = (5, 10)  # mean R: image<->text recall at these k, both ways
RECIPE = "norm-frozen-20"  # the variant configs/covid_pairs.yaml took
# The steps that led to the recipe (from, to, what changed), and what was tried on it after (folder, label).
STEPS = (
    ("recipe", "norm-frozen", "keep the image trunk's batch-norm statistics"),
    ("norm-frozen", RECIPE, "then the longer training"),
)
TRIED_AFTER = (
    ("ema-20", "a moving average of the weights"),
    ("convirt-repeated-20", "the ConVIRT loss with a case's repeated description as a positive"),
    ("frontal-20", "frontal films only"),
    ("negatives-20", "Open-i's normal reports as text-only negatives"),
)


def fit(run: Path, shards: Path, overrides: dict[str, object], seed: int) -> Path:
    """`convirt fit` of one variant and seed; reused when made at this commit with this config."""
    checkpoint = run / "checkpoints" / "last.ckpt"
    key = recipe_key(shards, seed, overrides)
    if not reusable(run, key):
        convirt("fit", "--config", str(write_recipe(run, shards, seed, overrides)))
        mark_done(run, key)
    return checkpoint


def _evaluated(checkpoint: Path, labels: Path, out: Path, command: list[str]) -> dict:
    """``command``'s metrics.json in ``out``, run unless made for this checkpoint and labels at this commit."""
    return cached_commands(
        out, "metrics.json", [[*command, "--output", str(out)]], convirt, checkpoint=checkpoint, labels=labels
    )


def kermany_metrics(checkpoint: Path, labels: Path, out: Path) -> dict:
    """`convirt zeroshot --descriptors pneumonia` on the Kermany images."""
    return _evaluated(
        checkpoint,
        labels,
        out,
        [
            "zeroshot",
            "--checkpoint",
            str(checkpoint),
            "--descriptors",
            "pneumonia",
            "--data",
            str(labels),
            "--where",
            KERMANY,
            "--labels",
            "Pneumonia",
            "--bootstrap",
            "200",
        ],
    )


def kermany(checkpoint: Path, labels: Path, out: Path) -> dict[str, float]:
    """Zero-shot AUROC of each scoring method on the Kermany images."""
    result = kermany_metrics(checkpoint, labels, out)
    return {method: result[method]["findings"]["Pneumonia"]["auroc"] for method in METHODS}


def kermany_probe_metrics(checkpoint: Path, labels: Path, out: Path) -> dict:
    """The linear probe on the image-trunk features of the Kermany images, all its labels."""
    return _evaluated(
        checkpoint,
        labels,
        out,
        [
            "probe",
            "--checkpoint",
            str(checkpoint),
            "--data",
            str(labels),
            "--where",
            KERMANY,
            "--labels",
            "Pneumonia",
            "--fractions",
            "1",
            "--probes",
            "linear",
            "--bootstrap",
            "100",
        ],
    )


def kermany_probe(checkpoint: Path, labels: Path, out: Path) -> float:
    """Pooled out-of-fold AUROC of the linear probe on the image-trunk features of the Kermany images."""
    return float(kermany_probe_metrics(checkpoint, labels, out)["probes"][0]["findings"]["Pneumonia"]["auroc"])


def _counted(values: Iterable[str]) -> str:
    """Distinct values with how many runs had each."""
    counts = Counter(values)
    return "; ".join(f"{value} ({count} run{'s' if count > 1 else ''})" for value, count in sorted(counts.items()))


def _spread(values: list[float]) -> str:
    return (
        f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} ("
        + ", ".join(f"{v:.3f}" for v in values)
        + ")"
    )


def make_shards(pairs: Path, work: Path, flavour: str) -> Path:
    """The covid-pairs shards of one ``SHARDS`` flavour (made once per work folder)."""
    shards = work / f"shards-{flavour}"
    if not (shards / "manifest.json").is_file():
        convirt(
            "shards",
            "--input",
            str(pairs),
            "--output",
            str(shards),
            "--workers",
            "2",
            "--image-size",
            "256",
            *SHARDS[flavour],
        )
    return shards


def baseline_result(work: Path, labels: Path, name: str, pretrained: bool) -> dict:
    """Zero-shot AUROCs and the probe of untrained towers or a random initialisation (for scale)."""
    checkpoint = baseline_checkpoint(work, pretrained)
    return {
        "zero": kermany(checkpoint, labels, work / f"{name}-kermany"),
        "probe": kermany_probe(checkpoint, labels, work / f"{name}-probe"),
    }


def run_result(
    work: Path, shards: Path, folder: str, overrides: dict[str, object], seed: int, labels: Path, reports: tuple
) -> dict:
    """Train one variant with one seed and evaluate it: every figure of its row, and what the
    section's text says of the sets it was measured on."""
    from convirt.models.checkpoint import read_run

    run = work / f"{folder}-s{seed}"
    checkpoint = fit(run, shards, overrides, seed)
    zeroshot = kermany_metrics(checkpoint, labels, run / "kermany")
    probe = kermany_probe_metrics(checkpoint, labels, run / "probe")
    pairs_recall = heldout(checkpoint, shards, run / "heldout")["image_text"]
    manifest = json.loads((shards / "manifest.json").read_text(encoding="utf-8"))
    return {
        "zero": {method: zeroshot[method]["findings"]["Pneumonia"]["auroc"] for method in METHODS},
        "probe": float(probe["probes"][0]["findings"]["Pneumonia"]["auroc"]),
        "recall": statistics.mean(
            pairs_recall[way][f"recall_at_{k}"] for way in ("image_to_text", "text_to_image") for k in RECALL_KS
        ),
        "stand_in": openi_stand_in(checkpoint, reports, run / "openi")["names"],
        "kermany_samples": zeroshot["samples"],
        "kermany_positives": zeroshot["positives"]["Pneumonia"],
        "probe_folds": probe["folds"],
        "test_images": manifest["splits"]["test"]["samples"],
        "precision": read_run(checkpoint).get("precision", "not recorded"),
        "machine": machine_line(),
    }


def main() -> None:
    parser = shared_data_parser(__doc__, ROOT / "artifacts" / "dev-recipes")
    parser.add_argument(
        "--results",
        default=str(RESULTS),
        help="where each run's figures are kept (in git, so that a later session goes on from them)",
    )
    args = parser.parse_args()
    shared, work, stored = Path(args.shared), Path(args.work), Path(args.results)
    if (inputs := real_data_inputs(shared)) is None:
        return
    pairs, labels = inputs
    reports = read_test_reports(ensure_recipe_text_model(shared))
    at = commit()
    scale = {}
    for name, pretrained in (("untrained", True), ("random", False)):
        key = {"commit": at, "baseline": name}
        if (result := load_result(stored / f"{name}.json", key)) is None:
            result = baseline_result(work, labels, name, pretrained)
            save_result(stored / f"{name}.json", key, result)
        zero = " / ".join(f"{v:.3f}" for v in result["zero"].values())
        scale[name] = f"{zero}, linear probe {result['probe']:.3f}"
    runs: dict[tuple[str, int], dict] = {}
    for folder, flavour, overrides in VARIANTS.values():
        for seed in SEEDS:
            key = {"commit": at, "variant": folder, "seed": seed}
            path = stored / f"{folder}-s{seed}.json"
            if (result := load_result(path, key)) is None:
                started = time.perf_counter()
                shards = make_shards(pairs, work, flavour)
                result = run_result(work, shards, folder, overrides, seed, labels, reports)
                save_result(path, key, result)
                print(f"[dev-recipes] {folder} seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
            runs[folder, seed] = result
    rows, results, test_sizes = [], {}, {}
    for name, (folder, flavour, _) in VARIANTS.items():
        own = [runs[folder, seed] for seed in SEEDS]
        zero = {method: [r["zero"][method] for r in own] for method in METHODS}
        probe = [r["probe"] for r in own]
        recall = [r["recall"] for r in own]
        stand_in = [r["stand_in"] for r in own]
        test_sizes[flavour] = own[0]["test_images"]
        results[folder] = {
            "zero": statistics.mean(statistics.mean(v) for v in zero.values()),
            "probe": statistics.mean(probe),
            "recall": statistics.mean(recall),
            "stand_in": statistics.mean(stand_in),
            "shards": flavour,
        }
        rows.append(
            f"| {name} | "
            + " | ".join(_spread(zero[method]) for method in METHODS)
            + f" | {_spread(probe)} | {statistics.mean(recall):.3f} | {statistics.mean(stand_in):.3f} |"
        )
    first = runs[VARIANTS[next(iter(VARIANTS))][0], SEEDS[0]]
    samples, positives, folds = first["kermany_samples"], first["kermany_positives"], first["probe_folds"]

    def change(before: str, after: str) -> str:
        a, b = results[before], results[after]
        return (
            f"trunk probe {a['probe']:.3f} -> {b['probe']:.3f}, mean of the three zero-shot AUROCs "
            f"{a['zero']:.3f} -> {b['zero']:.3f}, mean R {a['recall']:.3f} -> {b['recall']:.3f}"
        )

    recipe = results[RECIPE]

    def tried_one(folder: str, label: str) -> str:
        r = results[folder]
        side = "below" if r["zero"] < recipe["zero"] else "not below"
        return (
            f"{label}: {r['zero']:.3f} ({side} the recipe; trunk probe {r['probe']:.3f}, mean R "
            f"{r['recall']:.3f} on its {test_sizes[r['shards']]}-image test split, Open-i pair "
            f"{r['stand_in']:.3f})"
        )

    tried = "; ".join(tried_one(folder, label) for folder, label in TRIED_AFTER)
    lines = [
        "## Real data: recipe candidates on a development set (Kermany pediatric images)",
        "",
        f"`python benchmarks/dev_recipes.py` at commit {at} (runs kept in `benchmarks/results/{SECTION}/`, "
        f"finished {time.strftime('%Y-%m-%d')}): variants of "
        f"`configs/covid_pairs.yaml` trained on covid-pairs ({_PREVIOUS['trainer.max_epochs']} epochs unless named), "
        f"seeds {', '.join(map(str, SEEDS))}. Zero-shot AUROC of `convirt zeroshot --descriptors pneumonia` on the "
        f"{samples} Kermany pediatric images of cxr-eval ({positives} pneumonia, "
        f"{samples - positives} normal; another hospital and age group, used only to choose between "
        "recipes; the NIH images are not read). Mean ± sd over seeds, then each seed. Linear probe: `convirt probe "
        f"--fractions 1 --probes linear` on the same images (image-trunk features, {folds} patient-grouped folds). "
        f"Mean R: image<->text recall at {' and '.join(map(str, RECALL_KS))}, both ways, on the covid-pairs test "
        "split (each variant's own shards: "
        + ", ".join(f"{size} images with `{flavour}` shards" for flavour, size in test_sizes.items())
        + "). Open-i pair: the held-out Open-i stand-in of `_openi_text.py` (text side). For scale: on these images "
        f"the untrained pretrained towers give zero-shot descriptors / pair / ensemble {scale['untrained']}, a random "
        f"initialisation (seed {SEEDS[0]}) {scale['random']}. The steps that made the recipe, in order: "
        + "; ".join(f"{label} ({change(before, after)})" for before, after, label in STEPS)
        + f". Tried on the recipe after that, against its mean of the three zero-shot AUROCs ({recipe['zero']:.3f}): "
        + tried
        + ".",
        "",
        "| variant | Kermany zero-shot, Xplainer descriptors | CheXzero-style pair | template ensemble | "
        "Kermany linear probe (trunk) | mean R (covid-pairs test) | Open-i stand-in, pair |",
        "|---|---|---|---|---|---:|---:|",
        *rows,
    ]
    lines += ["", "Runs made on: " + _counted(r["machine"].removeprefix("Machine: ") for r in runs.values()) + "."]
    lines += ["Trained with precision " + _counted(r["precision"] for r in runs.values()) + "."]
    write_section(Path(args.output), SECTION, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
