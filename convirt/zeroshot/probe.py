"""Linear and kNN probes on frozen image embeddings: the label-efficiency yardstick beside zero-shot.

The protocol of ConVIRT, GLoRIA and CXR-CLIP tables, on whatever labelled set is at hand: folds
grouped by patient (no patient in both the training and the test part), and in each fold the
classifier sees a seeded, stratified fraction (1%, 10%, 100%) of the training part. The linear
probe standardises the features and picks its regularisation by a patient-grouped inner
cross-validation on that training part (as CLIP's probes swept C on validation data). The
out-of-fold probabilities of all folds are pooled and scored with the zero-shot metrics.
Arrays in: the caller embeds the images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from convirt.embeddings.encode import EmbeddingOutput
from convirt.zeroshot.evaluate import aligned_labels
from convirt.zeroshot.metrics import NAN, evaluate_findings

PROBES = ("linear", "knn")


@dataclass
class ProbeOutput:
    """Out-of-fold probabilities of one probe at one label fraction.

    Attributes:
        probe: ``linear`` or ``knn``.
        fraction: Share of each fold's training part the probe was fitted on.
        probabilities: ``(N, F)`` out-of-fold probabilities (NaN where a fold could not be fitted).
        metrics: :func:`convirt.zeroshot.metrics.evaluate_findings` of those probabilities.
    """

    probe: str
    fraction: float
    probabilities: np.ndarray
    metrics: dict[str, Any]


def _subsample(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Positions of a stratified ``fraction`` of ``labels`` (at least one of each class)."""
    if fraction >= 1:
        return np.arange(len(labels))
    keep = []
    for value in (0, 1):
        rows = np.flatnonzero(labels == value)
        if rows.size:
            keep.append(rng.choice(rows, max(1, round(fraction * rows.size)), replace=False))
    return np.sort(np.concatenate(keep))


# Inverse regularisation strengths the linear probe chooses from (CLIP's probes swept C the same way).
C_GRID = np.logspace(-4, 2, 7)
INNER_FOLDS = 3


def _linear_probe(train_y: np.ndarray, train_groups: np.ndarray, seed: int) -> Any:
    """Standardised features, then logistic regression whose C is picked by patient-grouped inner
    cross-validation (AUROC) on the training part alone; fixed C=1 where that part is too small."""
    smallest = min(np.bincount(train_y, minlength=2))
    if smallest < INNER_FOLDS or len(set(train_groups)) < 2 * INNER_FOLDS:
        classifier: Any = LogisticRegression(C=1.0, max_iter=5000, random_state=seed)
    else:
        inner = StratifiedGroupKFold(n_splits=INNER_FOLDS, shuffle=True, random_state=seed)
        splits = list(inner.split(np.zeros(len(train_y)), train_y, train_groups))
        classifier = LogisticRegressionCV(
            Cs=C_GRID,
            cv=splits,
            scoring="roc_auc",
            max_iter=5000,
            l1_ratios=(0.0,),
            use_legacy_attributes=False,
            random_state=seed,
        )
    return make_pipeline(StandardScaler(), classifier)


def _fit_predict(
    probe: str,
    train_x: np.ndarray,
    train_y: np.ndarray,
    train_groups: np.ndarray,
    test_x: np.ndarray,
    k: int,
    seed: int,
) -> np.ndarray:
    if len(np.unique(train_y)) < 2:
        return np.full(len(test_x), NAN)
    if probe == "linear":
        model: Any = _linear_probe(train_y, train_groups, seed)
    else:
        model = KNeighborsClassifier(n_neighbors=min(k, len(train_y)), weights="distance", metric="cosine")
    model.fit(train_x, train_y)
    return np.asarray(model.predict_proba(test_x)[:, list(model.classes_).index(1)])


def run_probes(
    embeddings: np.ndarray,
    labels: np.ndarray,
    groups: Sequence[str],
    names: Sequence[str],
    fractions: Sequence[float] = (0.01, 0.1, 1.0),
    probes: Sequence[str] = PROBES,
    folds: int = 5,
    k: int = 10,
    seed: int = 0,
    bootstrap: int = 1000,
) -> list[ProbeOutput]:
    """Fit each probe at each label fraction in patient-grouped folds; score the pooled predictions.

    Args:
        embeddings: ``(N, D)`` frozen image embeddings.
        labels: ``(N, F)`` 0/1 labels.
        groups: Length ``N``: the patient of each image.
        names: Length ``F``: the finding names.
        fractions: Shares of each fold's training part to fit on.
        probes: ``linear`` (logistic regression) and/or ``knn`` (cosine, distance-weighted).
        folds: Number of patient-grouped, label-stratified folds.
        k: Neighbours of the kNN probe.
        seed: Seed of the folds, the subsamples and the bootstrap.
        bootstrap: Replicates for the metrics' CIs.

    Raises:
        ValueError: Shapes disagree, an unknown probe, a fraction outside (0, 1], or fewer
            patients than folds.
    """
    embeddings, labels = np.asarray(embeddings, dtype=np.float64), np.asarray(labels).astype(int)
    if (
        labels.ndim != 2
        or labels.shape[0] != len(embeddings)
        or len(groups) != len(embeddings)
        or labels.shape[1] != len(names)
    ):
        raise ValueError(
            f"{len(embeddings)} embeddings, labels {labels.shape}, {len(groups)} groups and "
            f"{len(names)} names do not match"
        )
    if unknown := sorted(set(probes) - set(PROBES)):
        raise ValueError(f"unknown probe {unknown[0]!r}; known: {', '.join(PROBES)}")
    if any(not 0 < f <= 1 for f in fractions):
        raise ValueError(f"fractions must lie in (0, 1], got {list(fractions)}")
    if len(set(groups)) < folds:
        raise ValueError(f"{len(set(groups))} patients, fewer than {folds} folds")
    group_array = np.asarray([str(g) for g in groups])
    outputs = []
    for probe in probes:
        for fraction in fractions:
            probabilities = np.full(labels.shape, NAN)
            for column in range(labels.shape[1]):
                y = labels[:, column]
                splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
                rng = np.random.default_rng(seed)
                for train, test in splitter.split(embeddings, y, groups):
                    chosen = train[_subsample(y[train], fraction, rng)]
                    probabilities[test, column] = _fit_predict(
                        probe, embeddings[chosen], y[chosen], group_array[chosen], embeddings[test], k, seed
                    )
            scored = np.nan_to_num(probabilities, nan=0.5)  # an unfittable fold scores as chance
            outputs.append(
                ProbeOutput(
                    probe,
                    float(fraction),
                    probabilities,
                    evaluate_findings(labels, scored, names, bootstrap=bootstrap, seed=seed),
                )
            )
    return outputs


def probe_embedded(
    embedded: EmbeddingOutput,
    names: list[str],
    fractions: Sequence[float] = (0.01, 0.1, 1.0),
    probes: Sequence[str] = PROBES,
    folds: int = 5,
    k: int = 10,
    seed: int = 0,
    bootstrap: int = 1000,
    about: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], list[ProbeOutput]]:
    """:func:`run_probes` on embedded images, their labels read from the metadata and each image's
    patient its group (its key where the patient is unknown).

    Returns:
        What `convirt probe` writes to ``metrics.json`` (``about`` first, then counts and one row
        per probe and fraction), and the probes' outputs.

    Raises:
        ValueError: A label never appears in the metadata, or is uncertain (-1) for some image:
            probes need every label decided.
    """
    labels = aligned_labels(embedded.meta, names, names)
    if (labels < 0).any():
        raise ValueError("probes need every label decided: use --uncertain zeros or ones, not ignore")
    groups = [str(meta.get("patient_id") or key) for meta, key in zip(embedded.meta, embedded.keys)]
    outputs = run_probes(embedded.embeddings, labels, groups, names, fractions, probes, folds, k, seed, bootstrap)
    metrics = {
        **(about or {}),
        "samples": len(labels),
        "skipped_samples": embedded.skipped,
        "patients": len(set(groups)),
        "folds": folds,
        "seed": seed,
        "dim": int(embedded.embeddings.shape[1]),
        "probes": [{"probe": o.probe, "fraction": o.fraction, **o.metrics} for o in outputs],
    }
    return metrics, outputs
