"""Held-out Open-i reports as a text-only stand-in for zero-shot diagnosis (no cxr-eval image is used).

Each test report's findings section takes the place of an image embedding and is scored with the
shipped `pneumonia` descriptor set by the three methods of `convirt zeroshot`. Positives: reports
whose MeSH terms include Pneumonia, Consolidation, Infiltrate or Airspace Disease; negatives:
reports indexed normal. Fixed before measuring.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

POSITIVE = {"Pneumonia", "Consolidation", "Infiltrate", "Airspace Disease"}
NEGATIVE = "No Finding"

RECALL_KS = (1, 5)  # findings -> impression recall at these k


def read_test_reports(shards: Path) -> tuple[list[str], list[str], list[int]]:
    """Findings, impressions and labels (1 airspace disease, 0 normal, -1 neither) of the test split."""
    from convirt.data.section_pairs import iter_split_metadata

    findings, impressions, labels = [], [], []
    for meta in iter_split_metadata(shards, "test"):
        sections = meta.get("sections") or {}
        if sections.get("findings") and sections.get("impression"):
            terms = {label.split("/")[0] for label in meta.get("labels", [])}
            findings.append(sections["findings"])
            impressions.append(sections["impression"])
            labels.append(1 if terms & POSITIVE else 0 if terms == {NEGATIVE} else -1)
    return findings, impressions, labels


def score_reports(
    encoder: Any, tokenizer: Any, findings: list[str], impressions: list[str], labels: list[int]
) -> dict[str, float]:
    """Findings->impression R@1/R@5 and the AUROC of each zero-shot method on the findings texts.

    ``encoder`` has ``encode_text`` and ``logit_scale`` (a model, or its trunks).
    """
    from sklearn.metrics import roc_auc_score

    from convirt.embeddings.encode import embed_texts
    from convirt.training.metrics import retrieval_recalls
    from convirt.zeroshot import Method, ZeroShotClassifier, load_descriptors

    with torch.no_grad():
        first, second = (embed_texts(encoder, tokenizer, texts) for texts in (findings, impressions))
        result = {k: v for k, v in retrieval_recalls(first, second, RECALL_KS).items() if k.startswith("i2t")}
        y = np.array(labels)
        keep = y >= 0
        descriptors = load_descriptors("pneumonia")
        for method in Method:
            classifier = ZeroShotClassifier(encoder, tokenizer, descriptors, method)
            scores = classifier.predict_features(first[torch.from_numpy(keep)]).probabilities[:, 0].numpy()
            result[method.value] = float(roc_auc_score(y[keep], scores))
    result["positives"], result["negatives"] = int((y == 1).sum()), int((y == 0).sum())
    return result


def openi_stand_in(checkpoint: Path, reports: tuple[list[str], list[str], list[int]], out: Path) -> dict:
    """The stand-in scored in a checkpoint's joint space (cached in ``out/openi-text/``, keyed on the
    checkpoint, the reports and the commit)."""
    from _cache import cache_key, mark_done, reusable

    folder = out / "openi-text"
    path = folder / "openi_text.json"
    key = cache_key(checkpoint=checkpoint, reports=json.dumps(reports))
    if not reusable(folder, key):
        from convirt.models import load_checkpoint

        loaded = load_checkpoint(checkpoint)
        path.write_text(json.dumps(score_reports(loaded.model, loaded.tokenizer, *reports)), encoding="utf-8")
        mark_done(folder, key)
    return json.loads(path.read_text(encoding="utf-8"))
