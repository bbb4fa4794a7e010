"""Recipe choice for the real-data run, measured on a split held out of covid-pairs (never on cxr-eval).

Variants of `configs/covid_pairs.yaml` are trained once each (seed 0) with a checkpoint per epoch:
the general MiniLM text tower, with the image tower locked (LiT), with one sentence per report as
the training text (ConVIRT's text sampling), and the text tower pretrained on Open-i reports
(`benchmarks/text_pretraining.py`), trained or locked, alone or with the image trunk locked too.
Chosen epochs are scored by image<->text recall@5/10 on the covid-pairs test split (87 images of
patients never trained on; a report identical to the image's own counts as a hit, since cases reuse
one description for several images; chance R@5 is about 0.06), and by the Open-i stand-in of
`_openi_text.py` (held-out report texts scored in the joint space: does the text side still separate
airspace disease from normal after training on the pairs?).

Writes the ``heldout-recipes`` section of BENCHMARKS.md. `python benchmarks/heldout_recipes.py`
(about 45 minutes on 2 CPU cores; runs already on disk under artifacts/heldout-recipes are reused).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from _markdown import machine_line, shared_data_parser, trained_precisions, write_section
from _openi_text import openi_stand_in, read_test_reports
from _process import convirt as run_convirt
from _recipe import write_recipe
from text_pretraining import ensure_text_model

ROOT = Path(__file__).resolve().parents[1]
SECTION = "heldout-recipes"
OPENI_TEXT = ROOT / "artifacts" / "openi-text"
# The text-tower (and batch-norm) settings each variant trains with, whatever configs/covid_pairs.yaml now says.
_GENERAL = {
    "model.text_model_path": None,
    "model.lock_text_tower": False,
    "model.freeze_text_layers": 3,
    "model.text_dropout": False,
    "model.freeze_image_norm": False,
}
_REPORTS = {**_GENERAL, "model.text_model_path": str(OPENI_TEXT / "model")}
VARIANTS: dict[str, tuple[str, dict[str, object]]] = {
    "general text tower (MiniLM as shipped)": ("shipped", _GENERAL),
    "image tower locked (LiT)": ("lit", {**_GENERAL, "model.lock_image_tower": True}),
    "one sentence per report": ("sentence", {**_GENERAL, "data.text_sampling": "sentence"}),
    "report-pretrained text tower": ("openi-text", _REPORTS),
    "report-pretrained text tower, locked": ("openi-text-locked", {**_REPORTS, "model.lock_text_tower": True}),
    "report-pretrained text tower, both trunks locked": (
        "openi-text-both-locked",
        {**_REPORTS, "model.lock_text_tower": True, "model.lock_image_tower": True},
    ),
}
EPOCHS = (3, 6, 10, 15, 20, 30)
SEED, KS = 0, (5, 10)  # the seed of every variant; image<->text recall at these k


def convirt(*args: str) -> None:
    run_convirt(*args, quiet=True)


def fit(run: Path, shards: Path, overrides: dict[str, object]) -> None:
    """Train a variant for max(EPOCHS) epochs, keeping every epoch's checkpoint (reused when made at
    this commit with this config)."""
    from _cache import mark_done, reusable
    from _recipe import recipe_key

    key = recipe_key(shards, SEED, overrides, epochs=max(EPOCHS))
    if reusable(run, key):
        return
    path = write_recipe(run, shards, SEED, {"trainer.max_epochs": max(EPOCHS), **overrides}, every_epoch=True)
    start = time.perf_counter()
    convirt("fit", "--config", str(path))
    (run / "done").write_text(f"{time.perf_counter() - start:.0f}\n")
    mark_done(run, key)


def heldout(checkpoint: Path, shards: Path, out: Path) -> dict:
    """Image<->text recall on the held-out test split of the pairs."""
    from _cache import cache_key, mark_done, reusable

    metrics = out / "retrieval.json"
    key = cache_key(checkpoint=checkpoint, shards=shards / "manifest.json", ks=KS)
    if not reusable(out, key):
        convirt(
            "embed",
            "--checkpoint",
            str(checkpoint),
            "--data",
            str(shards),
            "--split",
            "test",
            "--output",
            str(out / "img"),
        )
        convirt(
            "embed",
            "--checkpoint",
            str(checkpoint),
            "--data",
            str(shards),
            "--split",
            "test",
            "--texts",
            "--output",
            str(out / "txt"),
        )
        convirt("index", "build", "--embeddings", str(out / "img"), "--output", str(out / "index"))
        convirt(
            "index",
            "eval",
            "--index",
            str(out / "index"),
            "-k",
            str(KS[0]),
            "--texts",
            str(out / "txt"),
            "--output",
            str(metrics),
        )
        mark_done(out, key)
    return json.loads(metrics.read_text(encoding="utf-8"))


def main() -> None:
    parser = shared_data_parser(__doc__, ROOT / "artifacts" / "heldout-recipes")
    args = parser.parse_args()
    pairs, work = Path(args.shared) / "covid-pairs" / "pairs.csv", Path(args.work)
    if not pairs.is_file():
        print(f"real data not found: {pairs}; nothing measured")
        return
    shards = work / "shards"
    if not (shards / "manifest.json").is_file():
        convirt("shards", "--input", str(pairs), "--output", str(shards), "--workers", "2", "--image-size", "256")
    openi_shards, _ = ensure_text_model(Path(args.shared) / "openi-reports" / "NLMCXR_reports.tgz", OPENI_TEXT)
    reports = read_test_reports(openi_shards)
    trained: list[Path] = []  # the checkpoints evaluated, for the precision they recorded
    test_images = json.loads((shards / "manifest.json").read_text(encoding="utf-8"))["splits"]["test"]["samples"]
    chance = ", ".join(f"R@{k} {k / test_images:.2f}" for k in KS)  # the partner among k of N drawn at random
    recall_columns = [f"{way} R@{k}" for way in ("image->text", "text->image") for k in KS]
    lines = [
        "## Real data: recipe choice on a split held out of covid-pairs",
        "",
        f"`python benchmarks/heldout_recipes.py` on {time.strftime('%Y-%m-%d')}: "
        f"variants of `configs/covid_pairs.yaml`, seed {SEED}, scored by image<->text recall on the covid-pairs test "
        f"split ({test_images} images, patients never trained on; chance {chance}). The cxr-eval set is not "
        f"used for this choice. Mean R = mean of the {len(recall_columns)} recalls. Open-i stand-in: the held-out "
        "Open-i findings texts scored in the model's joint space with the `pneumonia` descriptor set (airspace "
        "disease vs normal, AUROC; `benchmarks/_openi_text.py`): does the trained text side still tell them apart?",
        "",
        "| variant | epochs | " + " | ".join(recall_columns) + " | mean R | Open-i stand-in, "
        f"descriptors | Open-i stand-in, pair | fit (s, {max(EPOCHS)} epochs) |",
        "|---|---:|" + "---:|" * (len(recall_columns) + 4),
    ]
    for name, (folder, overrides) in VARIANTS.items():
        run = work / folder
        fit(run, shards, overrides)
        seconds = (run / "done").read_text().strip()
        for epochs in EPOCHS:
            checkpoint = run / "checkpoints" / f"epochepoch={epochs - 1}.ckpt"
            trained.append(checkpoint)
            recall = heldout(checkpoint, shards, run / f"eval-{epochs}")["image_text"]
            stand_in = openi_stand_in(checkpoint, reports, run / f"eval-{epochs}")
            values = [recall[way][f"recall_at_{k}"] for way in ("image_to_text", "text_to_image") for k in KS]
            lines.append(
                f"| {name} | {epochs} | "
                + " | ".join(f"{v:.3f}" for v in values)
                + f" | {sum(values) / len(values):.3f} | {stand_in['descriptors']:.3f} | "
                f"{stand_in['names']:.3f} | {seconds} |"
            )
    lines += ["", f"{machine_line()}; trained with precision {trained_precisions(trained)}."]
    write_section(Path(args.output), SECTION, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
