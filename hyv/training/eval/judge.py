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
5. Motion: first bouncing (the LoRA adapter's motion, hyv/training/lora): the centroid's height
   y (fraction of the frame, growing downward), smoothed by a 3-frame running mean, has its
   largest value ("the floor") at a clip time in [0.2, 0.8], and both the fall to it from the
   first frame and the rise from it to the last frame are >= 0.10 of the frame height
   (`Judgement.bounce` = the smaller of the two). Otherwise linear fits over clip time of the
   centroid (displacement, fraction of the frame) and of log area. Displacement >= 0.10 or an
   area factor >= 1.6 count as motion; the clearer of the two (each relative to its threshold)
   decides moving-<direction> vs growing/shrinking; otherwise standing still. A straight motion
   has its extreme height at an end of the clip, so it never reads as a bounce. 1-frame clips
   get no motion. An object *leaving* the frame (its mask within `BORDER` of an edge while the
   edge facing away moves toward that border by >= 0.10 of the frame) is read off its box
   instead (``cut_edges``, the default): a cut edge is placed one object size from the edge
   facing away, the size taken from the frames where the box is whole (held when fewer than two
   of them span 0.25 of the clip), so it keeps moving at its speed instead of shrinking as its
   visible area falls. Rendered true continuations of the held-out clips (run on past their end)
   read their motion in 44 of 44 that way, 30 of 44 by the visible area. An object growing into
   the border keeps the area reading: its visible area still grows.
6. Objects and cleanliness, per frame: the pixels farther from the background than
   ``FOREGROUND_LEVEL`` of the object's contrast (at least `MIN_CONTRAST`), whatever their color,
   split into 8-connected components. The largest is the object (when it covers at least
   ``OBJECT_MIN_FRACTION`` of the frame); every other component larger than ``STRAY_FRACTION``
   (1%) of the frame is a stray. A frame is clean without strays; ``objects`` counts the object
   and the strays (1 is right; 0 is an empty frame, 4 four copies). Anti-aliased rims belong to
   the component of the shape they fringe, so rendered ground truth is 100% clean.
7. Shape IoU, per frame: the object's mask (``a > 0.5`` within its component) against the ideal
   shape of the judged kind (`hyv.training.data.render.shape_distance`) whose center and
   half-extent fit the object best: started from the mask's moments, refined by a pattern search
   maximizing the soft IoU (sum of min / sum of max) between the object's coverage and the
   ideal's anti-aliased coverage, then scored as the hard IoU of the two masks. Rendered ground
   truth reads ~1; a concave triangle, a square with bent sides or a blob read lower. A frame
   without an object scores 0, so a clip that starts black loses IoU.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from hyv.training.data.grammar import BACKGROUND_RGB, COLOR_RGB, Attributes, ClipSpec, parse_caption
from hyv.training.data.render import shape_distance

MIN_CONTRAST = 40.0  # object vs background distance (RGB units) below which nothing is found
CORE_LEVEL = 0.6
MOVE_THRESHOLD = 0.10  # centroid displacement over the clip, fraction of the frame side
SCALE_THRESHOLD = math.log(1.6)  # |log(area_end / area_start)|
BOUNCE_THRESHOLD = 0.10  # the fall and the rise of a bounce, each, fraction of the frame height
BOUNCE_FLOOR_TIMES = (0.2, 0.8)  # clip times where a bounce's lowest point may lie
TRIANGLE_SKEW = 0.0075  # |third central moment| / area^1.5 (triangle 0.021, circle/square 0)
TRIANGLE_FILL = 0.64  # area / (peak column mass * peak row mass): triangle 0.5, circle 0.785,
SQUARE_FILL = 0.81  # square 1.0
FOREGROUND_LEVEL = 0.25  # of the object's contrast: pixels farther from the background are foreground
STRAY_FRACTION = 0.01  # a component besides the object larger than this (of the frame) is a stray
BORDER = 0.04  # a mask's edge this close to the frame's border (fraction of the side) is cut by it
OBJECT_MIN_FRACTION = 0.0025  # the largest component is the object from this size (of the frame) on


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
    bounce: float = 0.0  # min(fall, rise) of the centroid around its lowest point, fraction of the height
    valid_frames: int = 0
    iou: float = math.nan  # shape IoU with the best-fitting ideal shape, mean over frames (0 if absent)
    frame_iou: tuple[float, ...] = ()  # per frame
    clean: float = math.nan  # fraction of frames without a stray component (> 1% of the frame)
    objects: tuple[int, ...] = ()  # per frame: the object (if any) + the strays
    one_object: float = math.nan  # fraction of frames with exactly one object and no stray
    frame_area: tuple[float, ...] = ()  # per frame: the object's area (fraction of the frame), nan if none


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
    box: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 1.0)  # mask's left, right, top, bottom edges
    cut: tuple[bool, bool, bool, bool] = (False, False, False, False)  # ... at the frame's border

    @property
    def clipped(self) -> bool:
        return any(self.cut)


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
        box=(x0 / W, (x1 + 1) / W, y0 / H, (y1 + 1) / H),
        cut=(x0 < BORDER * W, x1 >= (1.0 - BORDER) * W - 1, y0 < BORDER * H, y1 >= (1.0 - BORDER) * H - 1),
    )


@dataclass(frozen=True)
class _BoxTracks:
    """An object's motion read off its mask's box, for clips where it meets the frame's border."""

    tx: np.ndarray  # clip times with a readable center x
    cx: np.ndarray
    ty: np.ndarray  # ... center y
    cy: np.ndarray
    log_size_slope: float  # d log(linear size) / d clip time


def _leaving(t: np.ndarray, box: np.ndarray, cut: np.ndarray) -> bool:
    """Whether the object moves out through a border that cuts it: the edge facing away from that
    border travels toward it by at least `MOVE_THRESHOLD` over the clip (a growing object's far
    edge moves away from the border it meets). The object's visible extent then says nothing of
    its size: a generated circle or triangle narrows as it goes."""
    # per side (left, right, top, bottom): the column of its far edge in `box`, the sign toward it
    for side, (far, sign) in enumerate(((1, -1.0), (0, 1.0), (3, -1.0), (2, 1.0))):
        rows = ~cut[:, far]
        if not cut[:, side].any() or rows.sum() < 2:
            continue
        if sign * _slope(t[rows], box[rows, far]) >= MOVE_THRESHOLD:
            return True
    return False


def _box_tracks(t: np.ndarray, frames: list[_Frame], aspect: float) -> _BoxTracks | None:
    """The center and size change of an object leaving the frame (`_leaving`), so that it moves
    on rather than shrinking (module docstring, step 5); None for any other object.

    The size (every shape's box is 2r by 2r; short-side fractions) is fitted log-linearly over the
    frames where the box is whole if two of them lie 0.25 of the clip apart, else held at the
    median of those (or, with none whole, of the frames cut on one axis while 3/4 of the object
    shows, taking the other axis' extent). A cut edge is then placed one size from the edge that
    is not, on each axis cut on one side only. None too when no frame shows a size."""
    sx, sy = (1.0 / aspect, 1.0) if aspect >= 1.0 else (1.0, aspect)  # axis units per short side
    box = np.array([f.box for f in frames])  # (N, 4): left, right, top, bottom
    cut = np.array([f.cut for f in frames])  # (N, 4)
    width, height = (box[:, 1] - box[:, 0]) / sx, (box[:, 3] - box[:, 2]) / sy
    cut_x, cut_y = cut[:, 0] | cut[:, 1], cut[:, 2] | cut[:, 3]
    if not _leaving(t, box, cut):
        return None
    whole = ~cut_x & ~cut_y
    size = np.where(whole, 0.5 * (width + height), np.nan)
    if not whole.any():
        one_axis = np.where(cut_x, height, width)  # the extent along the axis that is not cut
        shown = np.where(cut_x, width, height) >= 0.75 * one_axis
        size = np.where((cut_x != cut_y) & shown, one_axis, size)
    known = np.isfinite(size) & (size > 0)
    if not known.any():
        return None
    log_size = np.log(np.where(known, size, 1.0))
    if whole.sum() >= 2 and np.ptp(t[whole]) >= 0.25:
        slope = _slope(t[known], log_size[known])
        level = float(log_size[known].mean()) + slope * (t - float(t[known].mean()))
    else:
        slope, level = 0.0, np.full(len(t), float(np.median(log_size[known])))
    half = 0.5 * np.exp(level)
    cx = np.where(
        cut[:, 0], box[:, 1] - half * sx, np.where(cut[:, 1], box[:, 0] + half * sx, box[:, :2].mean(1))
    )
    cy = np.where(
        cut[:, 2], box[:, 3] - half * sy, np.where(cut[:, 3], box[:, 2] + half * sy, box[:, 2:].mean(1))
    )
    rx, ry = ~(cut[:, 0] & cut[:, 1]), ~(cut[:, 2] & cut[:, 3])  # an axis cut on both sides: no center
    return _BoxTracks(t[rx], cx[rx], t[ry], cy[ry], slope)


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


def bounce_depth(t: np.ndarray, y: np.ndarray) -> float:
    """min(fall, rise) of a height track ``y`` (image y, down) over clip times ``t``: from the first
    frame down to the lowest point of the 3-frame running mean and back up to the last frame; 0
    when that point lies outside `BOUNCE_FLOOR_TIMES` (a straight motion) or with < 5 frames."""
    if len(y) < 5:
        return 0.0
    padded = np.concatenate([y[:1], y, y[-1:]])
    smooth = (padded[:-2] + padded[1:-1] + padded[2:]) / 3.0
    k = int(np.argmax(smooth))
    if not BOUNCE_FLOOR_TIMES[0] <= t[k] <= BOUNCE_FLOOR_TIMES[1]:
        return 0.0
    return float(max(0.0, min(smooth[k] - y[0], smooth[k] - y[-1])))


def _motion(
    t: np.ndarray, frames: list[_Frame], aspect: float = 1.0, cut_edges: bool = False
) -> tuple[str, float, float, float, float, float]:
    """(motion, confidence, dx, dy, area ratio, bounce) over clip times ``t`` in [0, 1]; with
    `cut_edges`, read off `_box_tracks` where the frame's border cuts the object."""
    tx, cx = t, np.array([f.cx for f in frames])
    ty, cy = t, np.array([f.cy for f in frames])
    log_area = _slope(t, np.log(np.maximum(np.array([f.area for f in frames]), 1e-9)))
    tracks = _box_tracks(t, frames, aspect) if cut_edges and any(f.clipped for f in frames) else None
    if tracks is not None:
        tx, cx, ty, cy = tracks.tx, tracks.cx, tracks.ty, tracks.cy
        log_area = 2.0 * tracks.log_size_slope
    dx = _slope(tx, cx) if len(tx) >= 2 else 0.0
    dy = _slope(ty, cy) if len(ty) >= 2 else 0.0
    bounce = bounce_depth(ty, cy)
    ratio = math.exp(log_area)
    if bounce >= BOUNCE_THRESHOLD:
        return "bouncing", min(1.0, bounce / BOUNCE_THRESHOLD - 1.0), dx, dy, ratio, bounce
    move = max(abs(dx), abs(dy)) / MOVE_THRESHOLD
    scale = abs(log_area) / SCALE_THRESHOLD
    if max(move, scale) < 1.0:
        return "standing still", 1.0 - max(move, scale), dx, dy, ratio, bounce
    conf = 1.0 - min(move, scale) / max(move, scale)
    if scale >= move:
        return ("growing" if log_area > 0 else "shrinking"), conf, dx, dy, ratio, bounce
    if abs(dx) >= abs(dy):
        return ("moving right" if dx > 0 else "moving left"), conf, dx, dy, ratio, bounce
    return ("moving down" if dy > 0 else "moving up"), conf, dx, dy, ratio, bounce


def _box_min3(x: np.ndarray, fill: int) -> np.ndarray:
    """Minimum over each pixel's 3x3 neighbourhood in the last two axes (separable), ``fill``
    outside the frame."""
    p = np.pad(x, ((0, 0), (1, 1), (0, 0)), constant_values=fill)
    rows = np.minimum(np.minimum(p[:, :-2], p[:, 1:-1]), p[:, 2:])
    p = np.pad(rows, ((0, 0), (0, 0), (1, 1)), constant_values=fill)
    return np.minimum(np.minimum(p[:, :, :-2], p[:, :, 1:-1]), p[:, :, 2:])


def components(mask: np.ndarray) -> np.ndarray:
    """8-connected components of each frame of a (T, H, W) bool mask: int labels, 0 off the mask,
    1..n on it (numbered over the whole clip, in raster order of each component's first pixel).

    Every pixel starts labelled with its own index; each round takes the smallest label in the
    3x3 neighbourhood and then jumps to the label of the pixel a label names (which lies in the
    same component), so compact components settle in a few rounds. numpy only (no scipy)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"expected a (T, H, W) mask, got shape {mask.shape}")
    n = mask.size
    none = n + 1  # larger than every label
    labels = np.where(mask, np.arange(1, n + 1, dtype=np.int64).reshape(mask.shape), none)
    while True:
        low = np.where(mask, _box_min3(labels, none), none)
        jumped = np.where(mask, low.reshape(-1)[np.minimum(low, n) - 1], none)
        if np.array_equal(jumped, labels):
            break
        labels = jumped
    out = np.zeros(mask.shape, dtype=np.int64)
    out[mask] = np.unique(labels[mask], return_inverse=True)[1] + 1
    return out


@dataclass(frozen=True)
class _Objects:
    """Per frame: the object's component label (0: none), the object count, clean or not."""

    labels: np.ndarray  # (T, H, W) component labels
    object_label: list[int]
    objects: list[int]
    clean: list[bool]


def _objects(fg: np.ndarray) -> _Objects:
    """The components of the foreground (T, H, W) and, per frame, the object and its strays."""
    T, H, W = fg.shape
    labels = components(fg)
    areas = np.bincount(labels.reshape(-1))
    frame_of = np.zeros(len(areas), dtype=np.int64)  # each label's frame
    flat = labels.reshape(-1)
    on = np.flatnonzero(flat)
    frame_of[flat[on]] = on // (H * W)
    object_label, objects, clean = [], [], []
    for k in range(T):
        ids = np.flatnonzero(frame_of == k)
        ids = ids[ids > 0]
        sizes = areas[ids]
        order = np.argsort(-sizes, kind="stable")
        ids, sizes = ids[order], sizes[order]
        has_object = len(ids) > 0 and sizes[0] >= OBJECT_MIN_FRACTION * H * W
        strays = int(np.sum(sizes[1:] > STRAY_FRACTION * H * W)) if len(ids) else 0
        object_label.append(int(ids[0]) if has_object else 0)
        objects.append(int(has_object) + strays)
        clean.append(strays == 0)
    return _Objects(labels, object_label, objects, clean)


def _ideal_coverage(shape: str, px: np.ndarray, py: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage (K, h, w) of K ideal shapes, ``params`` (K, 3) = center x, center y,
    half-extent (pixels). The signed distances are homogeneous (d(p; c, r) = r d((p - c) / r; 0, 1)),
    so one `shape_distance` call scores every candidate."""
    cx, cy, r = (params[:, i, None, None] for i in range(3))
    dist = shape_distance(shape, (px - cx) / r, (py - cy) / r, 0.0, 0.0, 1.0) * r
    return np.clip(0.5 - dist, 0.0, 1.0)


def shape_iou(shape: str, coverage: np.ndarray, mask: np.ndarray | None = None) -> float:
    """IoU of an object's mask with the best-fitting ideal ``shape`` (module docstring, step 7).

    ``coverage``: the object's soft coverage (H, W) in [0, 1] (strays already removed); ``mask``:
    its hard mask (default ``coverage > 0.5``). 0.0 when the mask is (nearly) empty."""
    coverage = np.clip(np.asarray(coverage, dtype=np.float64), 0.0, 1.0)
    mask = coverage > 0.5 if mask is None else np.asarray(mask, dtype=bool)
    ys, xs = np.nonzero(mask)
    if len(ys) < 3:
        return 0.0
    H, W = mask.shape
    extent = max(int(ys.max() - ys.min()), int(xs.max() - xs.min())) + 1
    pad = max(3, extent // 3)  # room for the rim and for an ideal shape larger than the mask
    y0, y1 = max(0, int(ys.min()) - pad), min(H, int(ys.max()) + pad + 1)
    x0, x1 = max(0, int(xs.min()) - pad), min(W, int(xs.max()) + pad + 1)
    window = coverage[y0:y1, x0:x1]
    target = np.where(mask[y0:y1, x0:x1] | (window <= 0.5), window, 0.0)  # the mask and its rim
    px = np.arange(x0, x1, dtype=np.float64)[None, None, :] + 0.5
    py = np.arange(y0, y1, dtype=np.float64)[None, :, None] + 0.5
    mass = float(target.sum())
    cx = float(target.sum(axis=0) @ px[0, 0]) / mass
    cy = float(target.sum(axis=1) @ py[0, :, 0]) / mass
    r = math.sqrt(mass / {"circle": math.pi, "square": 4.0}.get(shape, 2.0))  # area pi r^2, 4 r^2, 2 r^2
    if shape == "triangle":  # its centroid lies r/3 below the center of its bounding box
        cy -= r / 3.0

    def soft_iou(params: np.ndarray) -> np.ndarray:
        ideal = _ideal_coverage(shape, px, py, params)
        inter = np.minimum(ideal, target).sum(axis=(1, 2))
        return inter / np.maximum(np.maximum(ideal, target).sum(axis=(1, 2)), 1e-9)

    best = np.array([cx, cy, max(r, 0.5)])
    score = float(soft_iou(best[None])[0])
    step = max(0.5, 0.1 * best[2])
    moves = np.concatenate([np.eye(3), -np.eye(3)])
    while step > 0.02:  # pattern search: the best of the six axis moves, else a finer step
        candidates = best + step * moves
        candidates[:, 2] = np.maximum(candidates[:, 2], 0.5)
        scores = soft_iou(candidates)
        i = int(np.argmax(scores))
        if scores[i] > score + 1e-12:
            best, score = candidates[i], float(scores[i])
        else:
            step /= 2.0
    gx = np.arange(W, dtype=np.float64)[None, :] + 0.5
    gy = np.arange(H, dtype=np.float64)[:, None] + 0.5
    ideal = shape_distance(shape, gx, gy, float(best[0]), float(best[1]), float(best[2])) < 0.0
    union = int(np.sum(ideal | mask))
    return float(np.sum(ideal & mask)) / union if union else 0.0


def judge_clip(frames: np.ndarray, background: str | None = "auto", cut_edges: bool = True) -> Judgement:
    """Judge one clip: uint8 (T, H, W, 3) or one image (H, W, 3). ``background``: "auto" (or
    None) to detect it from the border, or "black"/"gray" to name it. ``cut_edges`` (default):
    read the motion of an object that leaves the frame off its box (module docstring, step 5);
    False reads it off its visible area and centroid alone, where it shrinks."""
    x = np.asarray(frames, dtype=np.float64)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3 or min(x.shape[1:3]) < 4:
        raise ValueError(f"expected frames (T, H, W, 3) or (H, W, 3), got {np.shape(frames)}")
    T = x.shape[0]
    bg, bg_name = _background(x, background)
    dist = np.linalg.norm(x - bg, axis=-1)
    dmax = float(np.percentile(dist, 99.9))
    if dmax < MIN_CONTRAST:  # nothing drawn: clean, but no object and nothing of the shape
        return Judgement(
            found=False, background=bg_name, iou=0.0, frame_iou=(0.0,) * T, clean=1.0, objects=(0,) * T,
            one_object=0.0,
        )  # fmt: skip
    core = dist > CORE_LEVEL * dmax
    mean = x[core].mean(axis=0)
    color, color_conf = _color(mean, bg)
    u = mean - bg
    alpha = ((x - bg) @ u) / float(u @ u)
    objs = _objects(dist > max(MIN_CONTRAST, FOREGROUND_LEVEL * float(np.linalg.norm(u))))
    clean, objects = float(np.mean(objs.clean)), tuple(objs.objects)
    one_object = float(np.mean([n == 1 for n in objects]))
    measured = [(k, _measure(alpha[k])) for k in range(T)]
    valid = [(k, m) for k, m in measured if m is not None]
    if not valid:
        return Judgement(
            found=False, color=color, background=bg_name, color_confidence=color_conf, iou=0.0,
            frame_iou=(0.0,) * T, clean=clean, objects=objects, one_object=one_object,
        )  # fmt: skip
    areas = np.array([m.area for _, m in valid])
    big = [m for _, m in valid if m.area >= 0.5 * areas.max()]  # shape reads best at full size
    fill = float(np.median([m.fill for m in big]))
    skew = float(np.median([m.skew for m in big]))
    shape, shape_conf = _shape(fill, skew)
    motion: str | None = None
    motion_conf, dx, dy, ratio, bounce = 0.0, 0.0, 0.0, 1.0, 0.0
    if T > 1 and len(valid) >= 2:
        t = np.array([k / (T - 1) for k, _ in valid])
        aspect = x.shape[2] / x.shape[1]
        motion, motion_conf, dx, dy, ratio, bounce = _motion(t, [m for _, m in valid], aspect, cut_edges)
    ious = []
    for k in range(T):
        label = objs.object_label[k]
        if label == 0:
            ious.append(0.0)
            continue
        inside = objs.labels[k] == label
        strays = (objs.labels[k] > 0) & ~inside
        ious.append(shape_iou(shape, np.where(strays, 0.0, alpha[k]), (alpha[k] > 0.5) & inside))
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
        bounce=bounce,
        valid_frames=len(valid),
        iou=float(np.mean(ious)),
        frame_iou=tuple(ious),
        clean=clean,
        objects=objects,
        one_object=one_object,
        frame_area=tuple(m.area if m is not None else math.nan for _, m in measured),
    )


def _expected(expected: Attributes | ClipSpec | str) -> Attributes:
    if isinstance(expected, ClipSpec):
        return expected.attributes
    if isinstance(expected, str):
        return parse_caption(expected)
    return Attributes(*expected)


def score(
    judged: Iterable[tuple[Judgement, Attributes | ClipSpec | str, int]], failures: list[str] | None = None
) -> dict[str, float]:
    """`evaluate`'s tally over judgements already made: (judgement, expected, frames of the clip)."""
    n = n_motion = frames = 0
    right = {"color": 0, "shape": 0, "background": 0, "motion": 0, "all": 0}
    iou = clean = one_object = 0.0
    for j, exp, t in judged:
        want = _expected(exp)
        n += 1
        ok = {"color": j.color == want.color, "shape": j.shape == want.shape}
        ok["background"] = j.background == want.background
        if t > 1:
            n_motion += 1
            ok["motion"] = j.motion == want.motion
        for key, good in ok.items():
            right[key] += int(good)
        right["all"] += int(all(ok.values()))
        iou += j.iou
        clean += j.clean * t
        one_object += j.one_object * t
        frames += t
        if failures is not None and not all(ok.values()):
            failures.append(f"expected {want}, judged {j}")
    if n == 0:
        raise ValueError("evaluate needs at least one clip")
    out = {key: right[key] / n for key in ("color", "shape", "background", "all")}
    out["motion"] = right["motion"] / n_motion if n_motion else math.nan
    out["iou"], out["clean"], out["one_object"] = iou / n, clean / frames, one_object / frames
    out["n"], out["n_motion"] = float(n), float(n_motion)
    return out


def evaluate(
    clips: Iterable[tuple[np.ndarray, Attributes | ClipSpec | str]],
    background: str | None = "auto",
    failures: list[str] | None = None,
) -> dict[str, float]:
    """Per-attribute accuracy of the judge's reading against the expected attributes, and the
    clips' shape fidelity and cleanliness.

    ``clips``: (frames, expected) pairs; expected is `Attributes`, a `ClipSpec` or a caption.
    Returns {"color", "shape", "background", "motion", "all", "iou", "clean", "one_object", "n",
    "n_motion"}: motion is scored on clips with more than one frame only ("n_motion" of them; NaN
    if none), "all" is the fraction of clips with every scored attribute right, "iou" the mean
    shape IoU of the clips, "clean" and "one_object" fractions of all frames. When ``failures`` is
    given, one line per wrong clip is appended to it."""

    def judged() -> Iterator[tuple[Judgement, Attributes | ClipSpec | str, int]]:
        for frames, exp in clips:
            x = np.asarray(frames)
            yield judge_clip(x, background), exp, x.shape[0] if x.ndim == 4 else 1

    return score(judged(), failures)
