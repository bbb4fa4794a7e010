"""Report pretraining of the demo text tower (section matching on Open-i), checked on held-out Open-i reports.

`convirt pretrain-text --config configs/openi_text.yaml` trains MiniLM's trunk on the findings /
impression pairs of the Open-i training split (no images). Both the tower as shipped and the
trained one are then measured on the Open-i *test* split (reports never trained on; no cxr-eval
image is used):

- section matching: findings -> impression R@1 / R@5 among all test reports;
- a text-only stand-in for zero-shot diagnosis: the findings section of each test report takes
  the place of an image embedding and is scored with the shipped `pneumonia` descriptor set by
  the three methods of `convirt zeroshot`. Positives: reports whose MeSH terms include
  Pneumonia, Consolidation, Infiltrate or Airspace Disease; negatives: reports indexed normal
  ("No Finding"). Fixed before measuring. It asks whether the text side can tell "airspace
  disease" findings from normal ones when the prompts are phrased as in `convirt zeroshot`.

Writes the ``text-pretraining`` section of BENCHMARKS.md. `python benchmarks/text_pretraining.py`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from _cache import recorded_commit
from _markdown import machine_line, shared_data_parser, write_section
from _openi_text import RECALL_KS, read_test_reports, score_reports
from _process import convirt

from convirt._hardware import choose_precision

ROOT = Path(__file__).resolve().parents[1]
SECTION = "text-pretraining"


def measure(
    text_model_path: str | None, findings: list[str], impressions: list[str], labels: list[int]
) -> dict[str, float]:
    """Section recall and the zero-shot stand-in on the text trunk (pooled, no projection)."""
    from convirt.models import create_model, create_tokenizer
    from convirt.models.features import TrunkEncoder

    model = create_model(
        "demo-effnet-minilm", pretrained=True, text_model_path=text_model_path, pretrained_image=False
    ).eval()
    encoder = TrunkEncoder(model)
    # The classifier's softmax temperature: that of section matching (a trunk has no logit scale).
    encoder.logit_scale = torch.tensor(math.log(1 / 0.05))  # type: ignore[attr-defined]
    return score_reports(
        encoder, create_tokenizer("demo-effnet-minilm", text_model_path), findings, impressions, labels
    )


def ensure_text_model(reports: Path, work: Path) -> tuple[Path, Path]:
    """Open-i text-only shards and the report-pretrained text model under ``work`` (made when missing)."""
    from _cache import cache_key, mark_done, reusable

    shards, model = work / "shards", work / "model"
    key = cache_key(config=ROOT / "configs" / "openi_text.yaml", reports=reports)
    if not reusable(work, key):
        convirt("shards", "--source", "openi", "--input", str(reports), "--output", str(shards))
        start = time.perf_counter()
        convirt(
            "pretrain-text",
            "--config",
            str(ROOT / "configs" / "openi_text.yaml"),
            "--data.shards",
            str(shards),
            "--model.output",
            str(model),
            "--trainer.default_root_dir",
            str(work / "fit"),
        )
        (work / "train_seconds.txt").write_text(f"{time.perf_counter() - start:.0f}\n")
        # What the run trained with: a text-model folder does not record it (the log's choice, see README).
        (work / "train_machine.txt").write_text(machine_line(choose_precision().precision) + "\n")
        mark_done(work, key)
    return shards, model


def main() -> None:
    parser = shared_data_parser(__doc__, ROOT / "artifacts" / "openi-text")
    args = parser.parse_args()
    reports, work = Path(args.shared) / "openi-reports" / "NLMCXR_reports.tgz", Path(args.work)
    if not reports.is_file():
        print(f"Open-i reports not found at {reports} (see ../shared/data/README.md); nothing measured")
        return
    shards, model = ensure_text_model(reports, work)
    findings, impressions, labels = read_test_reports(shards)
    rows = {
        "MiniLM as shipped": measure(None, findings, impressions, labels),
        "after section matching on Open-i train": measure(str(model), findings, impressions, labels),
    }
    seconds = (work / "train_seconds.txt").read_text().strip() if (work / "train_seconds.txt").is_file() else "?"
    first = next(iter(rows.values()))
    trained_on = work / "train_machine.txt"
    machine = f"evaluated on: {machine_line()}; trained on: " + (
        trained_on.read_text().strip() if trained_on.is_file() else "not recorded"
    )
    machine += f"; trained at commit {recorded_commit(work)}"
    lines = [
        "## Report pretraining of the text tower (Open-i, held-out reports)",
        "",
        f"`python benchmarks/text_pretraining.py` on {time.strftime('%Y-%m-%d')} ({machine}). "
        f"`convirt pretrain-text --config configs/openi_text.yaml` ({seconds} s where it trained): section matching "
        "(findings <-> impression of one report, in-batch negatives) on the Open-i training split, text trunk of "
        f"`demo-effnet-minilm` under its mean pooler. Measured on the {len(findings)} Open-i test reports with both "
        "sections (never trained on): findings -> impression recall, and a text-only stand-in for zero-shot "
        "diagnosis: each report's findings section is scored with the shipped `pneumonia` descriptor set, "
        f"{first['positives']} reports indexed Pneumonia / Consolidation / Infiltrate / Airspace Disease against "
        f"{first['negatives']} indexed normal (AUROC). No cxr-eval image is used.",
        "",
        "| text tower | "
        + " | ".join(f"findings->impression R@{k}" for k in RECALL_KS)
        + " | AUROC, Xplainer descriptors | AUROC, CheXzero-style pair | AUROC, template ensemble |",
        "|---|" + "---:|" * (len(RECALL_KS) + 3),
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | "
            + " | ".join(f"{r[f'i2t_R@{k}']:.3f}" for k in RECALL_KS)
            + f" | {r['descriptors']:.3f} | {r['names']:.3f} | {r['ensemble']:.3f} |"
        )
    write_section(Path(args.output), SECTION, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
