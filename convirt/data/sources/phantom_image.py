"""Drawing a phantom chest film with its findings painted in (see :mod:`convirt.data.sources.phantom`)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter
from scipy.ndimage import gaussian_filter

from convirt.data.sources.phantom_case import (
    CARDIOMEGALY,
    CONSOLIDATION,
    EDEMA,
    EFFUSION,
    NODULE,
    PNEUMOTHORAX,
    PhantomCase,
)


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
        pleural_line = np.exp(
            -(
                _ellipse(x, y, cx + towards * ax * (1 - shrink), lung_cy + 0.02, ax * shrink, lung_ay * (shrink + 0.08))
                ** 2
            )
            / 0.0006
        )
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
            starts = np.stack(
                [np.full(n, edge) + (0 if side == "right" else -0.035), base - 0.08 - rng.uniform(0, 0.1, n)], axis=1
            )
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
        lesion = _soft(_ellipse(x, y, lx, zy + rng.normal(0, 0.02), radius, radius * rng.uniform(0.85, 1.15)), 0.08)
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
