"""A synthetic chest-radiograph generator: the embedded default data of convirt.

This is a pipeline test bed, not a medical dataset. It draws a frontal chest film (body
outline, lungs, heart, diaphragm domes, ribs, clavicles, spine, vessel markings) with
findings painted in, and writes a free-text report for each image from varied phrasings:
named findings, descriptions of what is seen, hedges, negations of absent findings, and the
boilerplate normal reports that real archives repeat. Everything is deterministic from a seed.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from scipy.ndimage import gaussian_filter

from convirt.data.schema import NO_FINDING, Row

CARDIOMEGALY = "Cardiomegaly"
EFFUSION = "Pleural Effusion"
PNEUMOTHORAX = "Pneumothorax"
NODULE = "Nodule/Mass"
CONSOLIDATION = "Consolidation"
EDEMA = "Edema"

FINDINGS: tuple[str, ...] = (CARDIOMEGALY, EFFUSION, PNEUMOTHORAX, NODULE, CONSOLIDATION, EDEMA)

# Finding sets drawn per image, with their weights: normal, each finding alone, and the
# co-occurrences that real archives show most (heart failure; pneumonia with effusion).
_FINDING_MIX: tuple[tuple[tuple[str, ...], float], ...] = (
    ((), 0.30),
    ((CARDIOMEGALY,), 0.08),
    ((EFFUSION,), 0.08),
    ((PNEUMOTHORAX,), 0.08),
    ((NODULE,), 0.08),
    ((CONSOLIDATION,), 0.08),
    ((EDEMA,), 0.06),
    ((CARDIOMEGALY, EDEMA), 0.08),
    ((CARDIOMEGALY, EFFUSION), 0.08),
    ((CONSOLIDATION, EFFUSION), 0.08),
)

SOURCE = "phantom"


@dataclass(frozen=True)
class PhantomCase:
    """The ground truth of one phantom image: its findings and where they were drawn."""

    findings: tuple[str, ...]
    effusion_side: str = ""
    pneumothorax_side: str = ""
    lesion_side: str = ""
    lesion_zone: str = ""
    lesion_is_mass: bool = False
    consolidation_side: str = ""
    consolidation_zone: str = ""
    severity: str = ""


def sample_case(rng: np.random.Generator) -> PhantomCase:
    """Draw the findings of one image and where they lie."""
    weights = np.array([w for _, w in _FINDING_MIX])
    findings = _FINDING_MIX[rng.choice(len(_FINDING_MIX), p=weights / weights.sum())][0]
    sides = ("right", "left")
    return PhantomCase(
        findings=findings,
        effusion_side=str(rng.choice(("right", "left", "bilateral"), p=(0.4, 0.35, 0.25))),
        pneumothorax_side=str(rng.choice(sides)),
        lesion_side=str(rng.choice(sides)),
        lesion_zone=str(rng.choice(("upper", "mid", "lower"))),
        lesion_is_mass=bool(rng.random() < 0.35),
        consolidation_side=str(rng.choice(sides)),
        consolidation_zone=str(rng.choice(("upper", "lower"), p=(0.35, 0.65))),
        severity=str(rng.choice(("mild", "moderate", "large"), p=(0.35, 0.45, 0.2))),
    )


# ----------------------------------------------------------------------------- image


def _soft(signed: np.ndarray, softness: float) -> np.ndarray:
    """Smooth step: 1 inside (signed > 0), 0 outside, over a width of ``softness``."""
    return 1.0 / (1.0 + np.exp(-np.clip(signed / softness, -30, 30)))


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    """Signed closeness to an ellipse: positive inside, 0 on the border."""
    return 1.0 - np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)


def _blob_field(
    rng: np.random.Generator, x: np.ndarray, y: np.ndarray, cx: float, cy: float, spread: float, n: int
) -> np.ndarray:
    """A patchy field made of ``n`` Gaussian blobs scattered around (cx, cy)."""
    field = np.zeros_like(x)
    for _ in range(n):
        bx = cx + rng.normal(0, spread)
        by = cy + rng.normal(0, spread * 0.8)
        s = spread * rng.uniform(0.35, 0.8)
        field += rng.uniform(0.5, 1.0) * np.exp(-(((x - bx) ** 2 + (y - by) ** 2) / (2 * s * s)))
    return np.clip(field, 0, 1.2)


def _lines(
    canvas: np.ndarray,
    rng: np.random.Generator,
    starts: np.ndarray,
    angles: np.ndarray,
    lengths: np.ndarray,
    value: float,
    size: int,
) -> None:
    """Add straight line segments (normalised coordinates) of intensity ``value`` in place."""
    for (sx, sy), angle, length in zip(starts, angles, lengths):
        steps = max(2, int(length * size * 1.5))
        t = np.linspace(0, length, steps)
        px = np.clip(((sx + t * np.cos(angle)) * size).astype(int), 0, size - 1)
        py = np.clip(((sy + t * np.sin(angle)) * size).astype(int), 0, size - 1)
        canvas[py, px] += value * rng.uniform(0.6, 1.0)


def render_image(case: PhantomCase, rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """Draw one frontal chest radiograph.

    Args:
        case: The findings to draw.
        rng: Random generator; all anatomical variation comes from it.
        size: Side of the square image in pixels.

    Returns:
        ``uint8`` array of shape ``(size, size)``: bright is dense (bone, fluid), dark is air.
    """
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    x, y = np.meshgrid(grid, grid)
    # Patient position and habitus vary from film to film.
    shift_x, shift_y = rng.normal(0, 0.015), rng.normal(0, 0.015)
    x = x - shift_x
    y = y - shift_y
    soft = 0.012 + rng.uniform(0, 0.01)

    body = _soft(_ellipse(x, y, 0.5, 0.58, rng.uniform(0.44, 0.49), 0.62), soft * 2)
    img = 0.04 + 0.46 * body

    # Lungs: ellipses cut below by the diaphragm domes; the heart sits over the medial bases.
    lung_ay = rng.uniform(0.27, 0.31)
    lung_cy = 0.47 + rng.normal(0, 0.01)
    lungs = {}
    dome = {}
    for side, cx in (("right", 0.3), ("left", 0.7)):
        ax = rng.uniform(0.13, 0.155)
        cx = cx + rng.normal(0, 0.008)
        base = lung_cy + lung_ay * (0.82 if side == "right" else 0.88)
        dome_curve = base - 0.06 * (1 - ((x - cx) / (ax * 1.1)) ** 2)
        dome[side] = (cx, ax, base)
        lungs[side] = _soft(_ellipse(x, y, cx, lung_cy, ax, lung_ay), soft) * _soft(dome_curve - y, soft)

    # Pneumothorax: the lung collapses away from the chest wall, leaving air without markings.
    ptx_air = np.zeros_like(x)
    if PNEUMOTHORAX in case.findings:
        side = case.pneumothorax_side
        cx, ax, _ = dome[side]
        shrink = {"mild": 0.85, "moderate": 0.75, "large": 0.62}[case.severity]
        towards = 0.3 if side == "right" else -0.3
        collapsed = _soft(
            _ellipse(x, y, cx + towards * ax * (1 - shrink), lung_cy + 0.02, ax * shrink, lung_ay * (shrink + 0.08)),
            soft,
        )
        ptx_air = np.clip(lungs[side] - collapsed, 0, 1)
        lungs[side] = lungs[side] * collapsed
        pleural_line = np.exp(-(_ellipse(x, y, cx + towards * ax * (1 - shrink), lung_cy + 0.02,
                                         ax * shrink, lung_ay * (shrink + 0.08)) ** 2) / 0.0006)
        img += 0.1 * pleural_line * (ptx_air > 0.01)

    lung = np.clip(lungs["right"] + lungs["left"], 0, 1)
    img -= 0.26 * lung + 0.33 * ptx_air

    # Vessel markings radiate from the hila; thicker and more numerous in edema.
    markings = np.zeros_like(x)
    n_vessels = 34 if EDEMA in case.findings else 18
    for side, hx, direction in (("right", 0.4, np.pi), ("left", 0.6, 0.0)):
        angles = direction + rng.uniform(-1.2, 1.2, n_vessels) * (1 if side == "left" else -1)
        starts = np.stack([np.full(n_vessels, hx), np.full(n_vessels, lung_cy + 0.02)], axis=1)
        _lines(markings, rng, starts, angles, rng.uniform(0.06, 0.16, n_vessels), 0.05, size)
    if EDEMA in case.findings:
        # Kerley B lines: short horizontal lines at the lateral bases.
        for side in ("right", "left"):
            cx, ax, base = dome[side]
            edge = cx - ax * 0.85 if side == "right" else cx + ax * 0.85
            n = int(rng.integers(4, 8))
            starts = np.stack([np.full(n, edge) + (0 if side == "right" else -0.035),
                               base - 0.08 - rng.uniform(0, 0.1, n)], axis=1)
            _lines(markings, rng, starts, np.zeros(n), np.full(n, 0.035), 0.16, size)
    markings = gaussian_filter(markings, 0.7 * size / 256)
    img += markings * lung

    # Ribs: bright arcs across each hemithorax; clavicles across the apices; the spine.
    ribs = np.zeros_like(x)
    for i in range(10):
        y0 = lung_cy - lung_ay * 0.95 + i * lung_ay * 0.2
        for side, mx in (("right", 0.47), ("left", 0.53)):
            curve = y0 + 0.9 * (x - mx) ** 2 + 0.15 * np.abs(x - mx)
            ribs += np.exp(-((y - curve) ** 2) / 0.00012) * ((x < mx) if side == "right" else (x > mx))
    img += 0.07 * np.clip(ribs, 0, 1) * body
    for mx, tilt in ((0.3, 0.18), (0.7, -0.18)):
        clav = lung_cy - lung_ay * 0.92 + tilt * (x - mx)
        img += 0.1 * np.exp(-((y - clav) ** 2) / 0.00025) * (np.abs(x - mx) < 0.18)
    img += 0.16 * _soft(0.035 - np.abs(x - 0.5), 0.01) * _soft(0.9 - y, 0.02)

    # Heart: a dense shadow over the left of the midline; cardiomegaly widens it.
    cardio = CARDIOMEGALY in case.findings
    ctr = rng.uniform(0.58, 0.68) if cardio else rng.uniform(0.38, 0.47)
    thorax = (dome["left"][0] + dome["left"][1]) - (dome["right"][0] - dome["right"][1])
    heart_ax = ctr * thorax / 2
    heart_cx = 0.53 + rng.normal(0, 0.01)
    heart_cy = lung_cy + lung_ay * 0.5
    heart = _soft(_ellipse(x, y, heart_cx, heart_cy, heart_ax, rng.uniform(0.14, 0.17)), soft)
    img += 0.2 * heart * lung + 0.1 * heart

    # Pleural effusion: dependent fluid with a meniscus rising along the chest wall.
    if EFFUSION in case.findings:
        sides = ("right", "left") if case.effusion_side == "bilateral" else (case.effusion_side,)
        depth = {"mild": 0.06, "moderate": 0.11, "large": 0.17}[case.severity]
        for side in sides:
            cx, ax, base = dome[side]
            lateral = cx - ax if side == "right" else cx + ax
            level = base - depth + 2.2 * (x - lateral) ** 2 + rng.normal(0, 0.01)
            fluid = _soft(y - level, soft * 1.5) * _soft(_ellipse(x, y, cx, lung_cy, ax * 1.08, lung_ay * 1.1), soft)
            img += 0.22 * fluid

    # Nodule or mass: a round, well-circumscribed opacity within one lung.
    if NODULE in case.findings:
        cx, ax, _ = dome[case.lesion_side]
        zy = {"upper": -0.55, "mid": -0.1, "lower": 0.3}[case.lesion_zone] * lung_ay + lung_cy
        radius = rng.uniform(0.04, 0.065) if case.lesion_is_mass else rng.uniform(0.018, 0.03)
        lx = cx + rng.uniform(-0.45, 0.45) * ax
        lesion = _soft(_ellipse(x, y, lx, zy + rng.normal(0, 0.02), radius, radius * rng.uniform(0.85, 1.15)),
                       0.08)
        img += 0.3 * lesion

    # Consolidation: patchy airspace opacity in one zone, with dark air bronchograms.
    if CONSOLIDATION in case.findings:
        cx, ax, _ = dome[case.consolidation_side]
        zy = lung_cy + (0.45 if case.consolidation_zone == "lower" else -0.4) * lung_ay
        patch = _blob_field(rng, x, y, cx + rng.normal(0, 0.02), zy, 0.07, int(rng.integers(5, 9)))
        texture = gaussian_filter(rng.random((size, size)).astype(np.float32), 2 * size / 256)
        texture = (texture - texture.min()) / (np.ptp(texture) + 1e-6)
        patch = patch * lungs[case.consolidation_side] * (0.75 + 0.5 * texture)
        bronchi = np.zeros_like(x)
        n = int(rng.integers(3, 6))
        starts = np.stack([np.full(n, cx) + rng.normal(0, 0.02, n), np.full(n, zy - 0.05)], axis=1)
        _lines(bronchi, rng, starts, rng.uniform(1.2, 1.9, n), rng.uniform(0.05, 0.09, n), 1.0, size)
        img += 0.4 * patch - 0.12 * np.clip(bronchi, 0, 1) * (patch > 0.25)

    # Pulmonary edema: bilateral perihilar ("bat wing") haze.
    if EDEMA in case.findings:
        haze = sum(
            np.exp(-(((x - hx) ** 2) / (2 * 0.07**2) + ((y - lung_cy - 0.03) ** 2) / (2 * 0.12**2)))
            for hx in (0.36, 0.64)
        )
        img += rng.uniform(0.16, 0.24) * haze * lung

    # Exposure, contrast, detector noise and blur differ between films.
    img = np.clip(img, 0, 1)
    img = img ** rng.uniform(0.85, 1.2)
    img = img * rng.uniform(0.9, 1.1) + rng.normal(0, 0.02)
    img += rng.normal(0, rng.uniform(0.01, 0.025), img.shape)
    out = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.1)))
    return np.asarray(out)


# ----------------------------------------------------------------------------- report


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return str(options[int(rng.integers(len(options)))])


def _side_words(side: str) -> str:
    return "bilateral" if side == "bilateral" else side


_SIZE_WORDS = {"mild": "small", "moderate": "moderate", "large": "large"}


def _positive_sentence(case: PhantomCase, finding: str, rng: np.random.Generator) -> tuple[str, str]:
    """One sentence that reports a present finding, and the finding's name for the impression.

    The style is drawn per sentence: a description of what is seen (most often, as in real
    findings sections), the finding named, or a hedge.
    """
    style = str(rng.choice(("describe", "name", "hedge"), p=(0.55, 0.33, 0.12)))
    size = _SIZE_WORDS[case.severity]
    describe: tuple[str, ...]
    name: tuple[str, ...]
    hedge: tuple[str, ...]
    if finding == CARDIOMEGALY:
        describe = ("Enlarged cardiac silhouette.", "The cardiac silhouette is enlarged.",
                    "Increased cardiothoracic ratio.", "The heart shadow is widened.",
                    "The cardiomediastinal silhouette is enlarged.")
        name = ("Cardiomegaly.", "Moderate cardiomegaly.", "The heart is enlarged.", "Mild cardiomegaly is noted.")
        hedge = ("Borderline enlarged cardiac silhouette.", "Heart size is upper limits of normal to mildly enlarged.")
        impression = "Cardiomegaly."
    elif finding == EFFUSION:
        side = _side_words(case.effusion_side)
        plural = "s" if side == "bilateral" else ""
        describe = (f"Blunting of the {side} costophrenic angle{plural}.",
                    f"Blunted {side} costophrenic angle{plural}.",
                    f"Meniscus-shaped opacity at the {side} lung base{plural}.",
                    f"Fluid layering at the {side} base{plural}.")
        name = (f"{size.capitalize()} {side} pleural effusion{plural}.", f"There is a {size} {side} pleural effusion.")
        hedge = (f"Possible small {side} pleural effusion.", f"Trace {side} pleural fluid is not excluded.")
        impression = f"{side.capitalize()} pleural effusion{plural}."
    elif finding == PNEUMOTHORAX:
        side = case.pneumothorax_side
        describe = (f"Visible pleural line at the {side} apex with absent lung markings peripherally.",
                    f"Hyperlucent {side} hemithorax without lung markings laterally.",
                    f"A {side} visceral pleural line is seen, with no lung markings beyond it.")
        name = (f"{size.capitalize()} {side} pneumothorax.", f"There is a {size} {side}-sided pneumothorax.")
        hedge = (f"Questionable small {side} apical pneumothorax.",)
        impression = f"{side.capitalize()} pneumothorax."
    elif finding == NODULE:
        side, zone = case.lesion_side, case.lesion_zone
        kind = "mass" if case.lesion_is_mass else "nodule"
        describe = (f"Rounded opacity in the {side} {zone} zone.", f"Well-circumscribed density in the {side} lung.",
                    f"Focal round opacity projecting over the {side} {zone} lung.")
        name = (f"{side.capitalize()} {zone} lung {kind}.", f"A {kind} is seen in the {side} {zone} lung.")
        hedge = (f"Possible {kind} in the {side} lung, CT recommended.",)
        impression = f"{side.capitalize()} lung {kind}."
    elif finding == CONSOLIDATION:
        side, zone = case.consolidation_side, case.consolidation_zone
        describe = (f"Airspace opacity in the {side} {zone} zone.",
                    f"Patchy opacity with air bronchograms in the {side} {zone} lung.",
                    f"Dense airspace opacification of the {side} {zone} lobe.")
        name = (f"{side.capitalize()} {zone} lobe consolidation.",
                f"Consolidation in the {side} {zone} lobe, compatible with pneumonia.")
        hedge = (f"Patchy {side} {zone} opacity may represent early consolidation.",)
        impression = f"{side.capitalize()} {zone} lobe consolidation."
    elif finding == EDEMA:
        describe = ("Perihilar haziness and interstitial markings.",
                    "Bilateral perihilar opacities with Kerley B lines.",
                    "Pulmonary vascular congestion with interstitial thickening.")
        name = ("Pulmonary edema.", "Mild interstitial pulmonary edema.", "Findings consistent with pulmonary edema.")
        hedge = ("Possible mild interstitial edema.",)
        impression = "Pulmonary edema."
    else:
        raise ValueError(f"unknown phantom finding {finding!r}; known: {', '.join(FINDINGS)}")
    return _pick(rng, {"describe": describe, "name": name, "hedge": hedge}[style]), impression


_NEGATIONS: dict[str, tuple[str, ...]] = {
    CARDIOMEGALY: ("Heart size is normal.", "Normal cardiac silhouette.", "No cardiomegaly.",
                   "The cardiomediastinal silhouette is within normal limits."),
    EFFUSION: ("No pleural effusion.", "The costophrenic angles are sharp.", "No effusion."),
    PNEUMOTHORAX: ("No pneumothorax.", "No evidence of pneumothorax.", "No visible pleural line."),
    NODULE: ("No suspicious pulmonary nodules.", "No focal mass or nodule."),
    CONSOLIDATION: ("No focal consolidation.", "No airspace opacity."),
    EDEMA: ("No pulmonary edema.", "No vascular congestion.", "No interstitial edema."),
}

_BOILERPLATE_NORMAL = (
    "No acute cardiopulmonary process.",
    "Normal chest radiograph.",
    "The lungs are clear. The heart is normal in size. No pleural effusion or pneumothorax.",
    "No acute cardiopulmonary abnormality.",
    "Lungs are clear. No effusion, consolidation or pneumothorax. Heart size normal.",
)


def write_report(case: PhantomCase, rng: np.random.Generator) -> str:
    """Write the free-text report of one image.

    Args:
        case: The image's findings.
        rng: Random generator for the phrasing.

    Returns:
        A report with a ``FINDINGS:`` section and, most of the time, an ``IMPRESSION:``.
    """
    if not case.findings and rng.random() < 0.45:
        return _pick(rng, _BOILERPLATE_NORMAL)
    sentences: list[str] = []
    impressions: list[str] = []
    for finding in case.findings:
        sentence, impression = _positive_sentence(case, finding, rng)
        sentences.append(sentence)
        impressions.append(impression)
    for finding in FINDINGS:
        if finding not in case.findings and rng.random() < 0.5:
            sentences.append(_pick(rng, _NEGATIONS[finding]))
    order = rng.permutation(len(sentences))
    text = "FINDINGS: " + " ".join(sentences[i] for i in order) if sentences else ""
    if rng.random() < 0.6:
        impression = " ".join(impressions) if impressions else _pick(rng, _BOILERPLATE_NORMAL[:2])
        text = (text + " IMPRESSION: " + impression).strip()
    return text or _pick(rng, _BOILERPLATE_NORMAL)


# ----------------------------------------------------------------------------- rows


def _stream(seed: int, index: int, purpose: str) -> np.random.Generator:
    """The random stream of one sample for one purpose (case, image, report): each is independent."""
    return np.random.default_rng([seed, index, ("case", "image", "report").index(purpose)])


def generate_cases(num_samples: int, seed: int = 0) -> Iterator[tuple[str, PhantomCase, int]]:
    """Yield ``(key, case, index)`` per sample; a sample depends only on the seed and its index."""
    for index in range(num_samples):
        yield f"phantom-{seed}-{index:06d}", sample_case(_stream(seed, index, "case")), index


def make_sample(case: PhantomCase, seed: int, index: int, size: int = 256) -> tuple[np.ndarray, str]:
    """Render the image and write the report of one case, each from its own random stream."""
    image = render_image(case, _stream(seed, index, "image"), size)
    return image, write_report(case, _stream(seed, index, "report"))


def _render_to(path: str, case: PhantomCase, seed: int, index: int, size: int) -> None:
    tmp = path + ".tmp.png"
    Image.fromarray(render_image(case, _stream(seed, index, "image"), size)).save(tmp)
    os.replace(tmp, path)


def write_phantom(
    output: str | os.PathLike[str],
    num_samples: int,
    seed: int = 0,
    size: int = 256,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Write phantom images and a ``rows.csv`` in the generic CSV layout.

    Images already on disk are kept (a rerun after an interruption only draws the missing
    ones; every sample depends only on the seed and its index, so the result is the same).

    Args:
        output: Folder to create; ``images/`` and ``rows.csv`` go inside.
        num_samples: Number of image-report pairs.
        seed: Seed; the same seed gives the same files.
        size: Image side in pixels.
        workers: Processes drawing images.
        progress: Show a progress bar.

    Returns:
        Path of ``rows.csv`` (columns ``image, text, patient_id, labels, view, source``).
    """
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    from tqdm.auto import tqdm

    out = Path(output)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    jobs = []
    for key, case, index in generate_cases(num_samples, seed):
        image_rel = f"images/{key}.png"
        if not (out / image_rel).exists():
            jobs.append((str(out / image_rel), case, seed, index, size))
        text = write_report(case, _stream(seed, index, "report"))
        rows.append(Row(key=key, image_path=image_rel, text=text, patient_id=key,
                        labels=list(case.findings) or [NO_FINDING], view="PA", source=SOURCE))
    bar = tqdm(total=len(jobs), desc="phantom", unit="img", disable=not progress)
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as pool:
            for _ in pool.map(_render_to, *zip(*jobs), chunksize=16):
                bar.update()
    else:
        for job in jobs:
            _render_to(*job)
            bar.update()
    bar.close()
    csv_path = out / "rows.csv"
    tmp_csv = csv_path.with_suffix(".tmp")
    with open(tmp_csv, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "text", "patient_id", "labels", "view", "source"])
        for row in rows:
            writer.writerow([row.image_path, row.text, row.patient_id, ";".join(row.labels), row.view, row.source])
    os.replace(tmp_csv, csv_path)
    return csv_path


def read_phantom_rows(path: str | os.PathLike[str]) -> Iterator[Row]:
    """The rows of a folder written by ``convirt phantom`` (its ``rows.csv``), or of that CSV itself.

    Raises:
        FileNotFoundError: No ``rows.csv``; the message says how to draw one.
    """
    from convirt.data.sources.csv import read_csv_rows

    table = Path(path)
    if table.is_dir():
        table = table / "rows.csv"
    if not table.is_file():
        raise FileNotFoundError(f"no phantom rows at {table}: draw them with `convirt phantom --output DIR`")
    return read_csv_rows(table, source_name=SOURCE)
