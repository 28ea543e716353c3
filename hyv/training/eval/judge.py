"""An automatic judge that reads color, shape and motion off the pixels of a synthetic-style clip.

`judge_clip` works on uint8 (T, H, W, 3) frames (float input is read as 0..255):

1. Background: the median of the border pixels (all frames); named by the nearest of black/gray
   unless a hint is given. Segmentation always uses the measured color, so an off-gray generated
   background still segments.
2. Object color: the mean of the "core" pixels (farther from the background than 60% of the
   clip's 99.9th-percentile distance), explained as ``background + a * (palette - background)``
   for each palette color; the color with the smallest residual wins. Blur mixes object and
   background along exactly that line, so blurred or faded objects keep their color.
3. Per frame: a soft coverage map ``a`` (projection onto background -> object color: 0 on the
   background, 1 on the object, zero-mean noise), the object mask ``a > 0.5`` opened 3x3, and in
   a window around it the column/row marginals of ``a``: the area (their sum, preserved by blur),
   the centroid, the fill ratio area / (peak column mass * peak row mass) (square 1.0, circle
   pi/4, triangle 0.5) and the skewness |third central moment of a marginal| / area^1.5 (0 for
   circles and squares, 0.021 for a triangle; Gaussian blur leaves third moments unchanged).
4. Shape (median over the frames at >= half the largest area): a triangle when skewed or
   fill < 0.64, else a square when fill >= 0.81, else a circle. Fill ratios drift with blur and
   noise (a blurred square reads ~0.85-0.93); the thresholds hold for blur sigma <= 1.5 px and
   pixel noise sigma <= 10 at 64x64 (see tests/training/test_judge.py).
5. Motion: linear fits over clip time of the centroid (displacement, fraction of the frame) and
   of log area. Displacement >= 0.10 or an area factor >= 1.6 count as motion; the clearer of
   the two (each relative to its threshold) decides moving-<direction> vs growing/shrinking;
   otherwise standing still. 1-frame clips get no motion.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from hyv.training.data.grammar import BACKGROUND_RGB, COLOR_RGB, Attributes, ClipSpec, parse_caption

MIN_CONTRAST = 40.0  # object vs background distance (RGB units) below which nothing is found
CORE_LEVEL = 0.6
MOVE_THRESHOLD = 0.10  # centroid displacement over the clip, fraction of the frame side
SCALE_THRESHOLD = math.log(1.6)  # |log(area_end / area_start)|
TRIANGLE_SKEW = 0.0075  # |third central moment| / area^1.5 (triangle 0.021, circle/square 0)
TRIANGLE_FILL = 0.64  # area / (peak column mass * peak row mass): triangle 0.5, circle 0.785,
SQUARE_FILL = 0.81  # square 1.0


@dataclass(frozen=True)
class Judgement:
    """What the judge read off a clip; attributes are None when they cannot be determined."""

    found: bool
    color: str | None = None
    shape: str | None = None
    motion: str | None = None
    background: str | None = None
    color_confidence: float = 0.0
    shape_confidence: float = 0.0
    motion_confidence: float = 0.0
    fill: float = math.nan  # area / (peak column mass * peak row mass), median over frames
    skew: float = math.nan  # |third central moment of a marginal| / area^1.5, median over frames
    dx: float = 0.0  # centroid displacement over the clip (fraction of the width, + right)
    dy: float = 0.0  # (fraction of the height, + down)
    area_ratio: float = 1.0  # fitted last-frame area / first-frame area
    valid_frames: int = 0


def _background(x: np.ndarray, hint: str | None) -> tuple[np.ndarray, str]:
    border = np.concatenate(
        [
            x[:, 0].reshape(-1, 3),
            x[:, -1].reshape(-1, 3),
            x[:, :, 0].reshape(-1, 3),
            x[:, :, -1].reshape(-1, 3),
        ]
    )
    measured = np.median(border, axis=0)
    if hint is not None and hint != "auto":
        if hint not in BACKGROUND_RGB:
            raise ValueError(
                f"unknown background hint {hint!r} (expected auto or {', '.join(BACKGROUND_RGB)})"
            )
        return measured, hint
    name = min(BACKGROUND_RGB, key=lambda n: float(np.sum((measured - np.asarray(BACKGROUND_RGB[n])) ** 2)))
    return measured, name


def _color(mean: np.ndarray, bg: np.ndarray) -> tuple[str, float]:
    residuals: dict[str, float] = {}
    for name, rgb in COLOR_RGB.items():
        v = np.asarray(rgb, dtype=np.float64) - bg
        vv = float(v @ v)
        a = max(0.0, float((mean - bg) @ v) / vv) if vv > 1e-6 else 0.0
        residuals[name] = float(np.linalg.norm(mean - bg - a * v))
    best, second = sorted(residuals.values())[:2]
    name = min(residuals, key=residuals.__getitem__)
    return name, float(1.0 - best / max(second, 1e-6))


def _open3(mask: np.ndarray) -> np.ndarray:
    """3x3 binary opening (erode then dilate), edges padded with False."""

    def shifts(m: np.ndarray) -> list[np.ndarray]:
        p = np.pad(m, 1)
        h, w = m.shape
        return [p[i : i + h, j : j + w] for i in range(3) for j in range(3)]

    eroded = np.logical_and.reduce(shifts(mask))
    return np.logical_or.reduce(shifts(eroded))


@dataclass(frozen=True)
class _Frame:
    cx: float
    cy: float
    area: float
    fill: float
    skew: float


def _third_moment(mass: np.ndarray, pos: np.ndarray) -> float:
    """Third central moment (pixels^3) of a 1-D mass distribution; unchanged by Gaussian blur."""
    total = float(mass.sum())
    d = pos - float(mass @ pos) / total
    return float(mass @ d**3) / total


def _measure(alpha: np.ndarray) -> _Frame | None:
    """Measure the object in one coverage map (H, W); None when there is no object."""
    mask = alpha > 0.5
    opened = _open3(mask)
    if opened.any():
        mask = opened
    if not mask.any():
        return None
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1], cols[0], cols[-1]
    pad = max(3, int(0.35 * max(y1 - y0 + 1, x1 - x0 + 1)))  # room for the blurred rim
    H, W = alpha.shape
    ys, xs = slice(max(0, y0 - pad), min(H, y1 + pad + 1)), slice(max(0, x0 - pad), min(W, x1 + pad + 1))
    win = np.clip(alpha[ys, xs], -0.5, 1.5)  # signed, so pixel noise averages out of the sums
    mx, my = win.sum(axis=0), win.sum(axis=1)  # column and row marginals
    area = float(win.sum())
    weights = np.clip(win, 0.0, 1.0)
    total = float(weights.sum())
    if area <= 0.0 or total <= 0.0 or mx.max() <= 0.0 or my.max() <= 0.0:
        return None
    gy = np.arange(ys.start, ys.stop, dtype=np.float64) + 0.5
    gx = np.arange(xs.start, xs.stop, dtype=np.float64) + 0.5
    skew = max(abs(_third_moment(mx, gx)), abs(_third_moment(my, gy))) / area**1.5
    return _Frame(
        cx=float(weights.sum(axis=0) @ gx) / total / W,
        cy=float(weights.sum(axis=1) @ gy) / total / H,
        area=area / (H * W),
        fill=area / (float(mx.max()) * float(my.max())),
        skew=skew,
    )


def _shape(fill: float, skew: float) -> tuple[str, float]:
    """Shape and a confidence in [0, 1] (distance to the nearest decision threshold, scaled)."""
    if skew >= TRIANGLE_SKEW or fill < TRIANGLE_FILL:
        margin = max(skew / TRIANGLE_SKEW - 1.0, (TRIANGLE_FILL - fill) / 0.1)
        return "triangle", float(min(1.0, margin))
    not_triangle = min(1.0 - skew / TRIANGLE_SKEW, (fill - TRIANGLE_FILL) / 0.1)
    if fill >= SQUARE_FILL:
        return "square", float(min(1.0, not_triangle, (fill - SQUARE_FILL) / 0.1))
    return "circle", float(min(1.0, not_triangle, (SQUARE_FILL - fill) / 0.1))


def _slope(t: np.ndarray, v: np.ndarray) -> float:
    tc = t - t.mean()
    return float((tc @ (v - v.mean())) / max(float(tc @ tc), 1e-12))


def _motion(t: np.ndarray, frames: list[_Frame]) -> tuple[str, float, float, float, float]:
    """(motion, confidence, dx, dy, area ratio) over clip times ``t`` in [0, 1]."""
    dx = _slope(t, np.array([f.cx for f in frames]))
    dy = _slope(t, np.array([f.cy for f in frames]))
    log_area = _slope(t, np.log(np.maximum(np.array([f.area for f in frames]), 1e-9)))
    move = max(abs(dx), abs(dy)) / MOVE_THRESHOLD
    scale = abs(log_area) / SCALE_THRESHOLD
    ratio = math.exp(log_area)
    if max(move, scale) < 1.0:
        return "standing still", 1.0 - max(move, scale), dx, dy, ratio
    conf = 1.0 - min(move, scale) / max(move, scale)
    if scale >= move:
        return ("growing" if log_area > 0 else "shrinking"), conf, dx, dy, ratio
    if abs(dx) >= abs(dy):
        return ("moving right" if dx > 0 else "moving left"), conf, dx, dy, ratio
    return ("moving down" if dy > 0 else "moving up"), conf, dx, dy, ratio


def judge_clip(frames: np.ndarray, background: str | None = "auto") -> Judgement:
    """Judge one clip: uint8 (T, H, W, 3) or one image (H, W, 3). ``background``: "auto" (or
    None) to detect it from the border, or "black"/"gray" to name it."""
    x = np.asarray(frames, dtype=np.float64)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3 or min(x.shape[1:3]) < 4:
        raise ValueError(f"expected frames (T, H, W, 3) or (H, W, 3), got {np.shape(frames)}")
    T = x.shape[0]
    bg, bg_name = _background(x, background)
    dist = np.linalg.norm(x - bg, axis=-1)
    dmax = float(np.percentile(dist, 99.9))
    if dmax < MIN_CONTRAST:
        return Judgement(found=False, background=bg_name)
    core = dist > CORE_LEVEL * dmax
    mean = x[core].mean(axis=0)
    color, color_conf = _color(mean, bg)
    u = mean - bg
    alpha = ((x - bg) @ u) / float(u @ u)
    measured = [(k, _measure(alpha[k])) for k in range(T)]
    valid = [(k, m) for k, m in measured if m is not None]
    if not valid:
        return Judgement(found=False, color=color, background=bg_name, color_confidence=color_conf)
    areas = np.array([m.area for _, m in valid])
    big = [m for _, m in valid if m.area >= 0.5 * areas.max()]  # shape reads best at full size
    fill = float(np.median([m.fill for m in big]))
    skew = float(np.median([m.skew for m in big]))
    shape, shape_conf = _shape(fill, skew)
    motion: str | None = None
    motion_conf, dx, dy, ratio = 0.0, 0.0, 0.0, 1.0
    if T > 1 and len(valid) >= 2:
        t = np.array([k / (T - 1) for k, _ in valid])
        motion, motion_conf, dx, dy, ratio = _motion(t, [m for _, m in valid])
    return Judgement(
        found=True,
        color=color,
        shape=shape,
        motion=motion,
        background=bg_name,
        color_confidence=color_conf,
        shape_confidence=shape_conf,
        motion_confidence=motion_conf,
        fill=fill,
        skew=skew,
        dx=dx,
        dy=dy,
        area_ratio=ratio,
        valid_frames=len(valid),
    )


def _expected(expected: Attributes | ClipSpec | str) -> Attributes:
    if isinstance(expected, ClipSpec):
        return expected.attributes
    if isinstance(expected, str):
        return parse_caption(expected)
    return Attributes(*expected)


def evaluate(
    clips: Iterable[tuple[np.ndarray, Attributes | ClipSpec | str]],
    background: str | None = "auto",
    failures: list[str] | None = None,
) -> dict[str, float]:
    """Per-attribute accuracy of the judge's reading against the expected attributes.

    ``clips``: (frames, expected) pairs; expected is `Attributes`, a `ClipSpec` or a caption.
    Returns {"color", "shape", "background", "motion", "all", "n", "n_motion"}: motion is scored
    on clips with more than one frame only ("n_motion" of them; NaN if none), "all" is the
    fraction of clips with every scored attribute right. When ``failures`` is given, one line
    per wrong clip is appended to it."""
    n = n_motion = 0
    right = {"color": 0, "shape": 0, "background": 0, "motion": 0, "all": 0}
    for frames, exp in clips:
        want = _expected(exp)
        j = judge_clip(frames, background)
        n += 1
        ok = {"color": j.color == want.color, "shape": j.shape == want.shape}
        ok["background"] = j.background == want.background
        if np.asarray(frames).ndim == 4 and np.asarray(frames).shape[0] > 1:
            n_motion += 1
            ok["motion"] = j.motion == want.motion
        for key, good in ok.items():
            right[key] += int(good)
        right["all"] += int(all(ok.values()))
        if failures is not None and not all(ok.values()):
            failures.append(f"expected {want}, judged {j}")
    if n == 0:
        raise ValueError("evaluate needs at least one clip")
    out = {key: right[key] / n for key in ("color", "shape", "background", "all")}
    out["motion"] = right["motion"] / n_motion if n_motion else math.nan
    out["n"], out["n_motion"] = float(n), float(n_motion)
    return out
