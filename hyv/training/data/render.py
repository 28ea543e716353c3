"""Procedural rendering of synthetic clips: one flat-colored shape on a flat background.

Shapes are drawn from signed distance functions with analytic anti-aliasing (pixel coverage
``clip(0.5 - distance_in_pixels, 0, 1)``), so edges are smooth and objects a few pixels wide
still read as their shape. Colors are pure RGB (`grammar.COLOR_RGB`), backgrounds are black
(0, 0, 0) or gray (128, 128, 128).

`sample_spec` draws the uncaptioned variety (position, size, travel, growth) so that the object
always stays inside the frame with a margin, moving clips travel 30-45% of the frame side,
growing/shrinking clips change the linear size by 1.8-2.3x (the area by 3.2-5.3x), and still
clips do not move at all. Bouncing clips (LoRA data only, `grammar.LORA_MOTIONS`) drop 30-45% of the
frame height onto the floor (the lowest in-frame position) and rise back (`ClipSpec.state`).

Frames may be non-square (the training buckets' landscape and portrait sizes): positions are
fractions of each axis, sizes fractions of the short side, so a circle stays round at any aspect.
"""

from __future__ import annotations

import math

import numpy as np

from hyv.training.data.grammar import (
    BACKGROUND_RGB,
    BOUNCING,
    COLOR_RGB,
    MOTION_DIRECTION,
    Attributes,
    ClipSpec,
)

MARGIN = 0.05  # minimum gap between the object's bounding box and the frame edge (fraction)
# Half-extents (fraction of the frame side). At 64 px and the VAE's 8x spatial compression an
# object of half-extent 0.13 is 2x2 latent cells, and its circle and square differ by |dz|^2 ~185
# in the DiT's unit-variance latents against ~450 between circle and triangle (docs/training.md):
# too close for the DiT to tell apart (it draws one squircle for both). At 1.4x that size the
# circle/square gap is ~430, as large as the triangle gap it does learn; these ranges are 1.45x.
MOVE_SIZE = (0.15, 0.22)  # half-extent range of moving objects (0.22 + travel 0.45 + margins fit)
STILL_SIZE = (0.15, 0.26)
TRAVEL = (0.30, 0.45)  # distance a moving object covers over the clip
GROW_START_SIZE = (0.11, 0.16)
SHRINK_START_SIZE = (0.26, 0.36)
SCALE_FACTOR = (1.8, 2.3)  # linear size change of growing / shrinking objects
# Bumped whenever `sample_spec` draws different clips: latent caches of other versions are rebuilt.
DATA_VERSION = 1


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def axis_scales(aspect: float) -> tuple[float, float]:
    """(short side / width, short side / height) of a frame with width / height = `aspect`:
    what turns a size in short-side fractions into fractions of each axis."""
    if aspect <= 0:
        raise ValueError(f"aspect must be > 0, got {aspect}")
    return min(1.0, 1.0 / aspect), min(1.0, aspect)


def sample_spec(attrs: Attributes, rng: np.random.Generator, aspect: float = 1.0) -> ClipSpec:
    """A random `ClipSpec` with the given captioned attributes for a frame of width / height =
    `aspect`; the object stays in frame. On a square frame the draws are those of every earlier
    version (the bundled model's data)."""
    color, shape, motion, background = attrs
    if motion == BOUNCING:
        return _bouncing_spec(attrs, rng, aspect)
    if motion in MOTION_DIRECTION:
        size, travel, scale = _uniform(rng, MOVE_SIZE), _uniform(rng, TRAVEL), 1.0
    elif motion == "growing":
        size, travel, scale = _uniform(rng, GROW_START_SIZE), 0.0, _uniform(rng, SCALE_FACTOR)
    elif motion == "shrinking":
        size, travel, scale = _uniform(rng, SHRINK_START_SIZE), 0.0, 1.0 / _uniform(rng, SCALE_FACTOR)
    else:
        size, travel, scale = _uniform(rng, STILL_SIZE), 0.0, 1.0
    largest = size * max(scale, 1.0)
    dx, dy = MOTION_DIRECTION.get(motion, (0, 0))
    start = []
    for d, axis_scale in zip((dx, dy), axis_scales(aspect), strict=True):
        lo, hi = largest * axis_scale + MARGIN, 1.0 - largest * axis_scale - MARGIN
        a, b = (lo + travel, hi) if d < 0 else (lo, hi - travel) if d > 0 else (lo, hi)
        start.append(float(rng.uniform(a, b)))
    return ClipSpec(color, shape, motion, background, start[0], start[1], size, travel, scale)


def _bouncing_spec(attrs: Attributes, rng: np.random.Generator, aspect: float) -> ClipSpec:
    """A bouncing clip: the floor (the center's lowest point) is the bottom of the frame less the
    margin; the drop is drawn from TRAVEL (capped by the room above the floor)."""
    size, drop = _uniform(rng, MOVE_SIZE), _uniform(rng, TRAVEL)
    sx, sy = axis_scales(aspect)
    x = float(rng.uniform(size * sx + MARGIN, 1.0 - size * sx - MARGIN))
    top, floor = size * sy + MARGIN, 1.0 - size * sy - MARGIN
    drop = min(drop, floor - top)
    return ClipSpec(*attrs, x=x, y=floor - drop, size=size, travel=drop, scale=1.0)


def in_frame(spec: ClipSpec, margin: float = 0.0, aspect: float = 1.0) -> bool:
    """Whether the object's bounding box stays within the frame (less ``margin``) all clip long."""
    sx, sy = axis_scales(aspect)
    # Motion and scaling are linear, so the ends bound the path; a bounce's lowest point is t = 0.5.
    for t in (0.0, 0.5, 1.0):
        x, y, half = spec.state(t)
        for center, extent in ((x, half * sx), (y, half * sy)):
            if center - extent < margin - 1e-9 or center + extent > 1.0 - margin + 1e-9:
                return False
    return True


def shape_distance(shape: str, px: np.ndarray, py: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    """Signed distance (pixels; negative inside) of pixel centers to a shape of half-extent r.

    circle: radius r; square: side 2r; triangle: apex up, base 2r, height 2r, bounding box
    centered at (cx, cy). Polygon distances are the max over edge half-planes (exact near edges,
    which is all anti-aliasing needs)."""
    ux, uy = px - cx, py - cy
    if shape == "circle":
        return np.sqrt(ux * ux + uy * uy) - r
    if shape == "square":
        return np.maximum(np.abs(ux) - r, np.abs(uy) - r)
    if shape == "triangle":
        s5 = math.sqrt(5.0)
        base = uy - r
        left = (-2.0 * (ux + r) - (uy - r)) / s5
        right = (2.0 * (ux - r) - (uy - r)) / s5
        return np.maximum(base, np.maximum(left, right))
    raise ValueError(f"unknown shape {shape!r}")


def coverage(spec: ClipSpec, t: float, size: int, height: int | None = None) -> np.ndarray:
    """Anti-aliased object coverage in [0, 1], float32 (H, W), at clip time ``t`` in [0, 1], on a
    frame `size` pixels wide and `height` (default: `size`) high."""
    width, height = size, height or size
    x, y, half = spec.state(t)
    if half <= 0.0:  # a shrinking continuation past the point where the object vanished
        return np.zeros((height, width), dtype=np.float32)
    px = np.arange(width, dtype=np.float32)[None, :] + 0.5
    py = np.arange(height, dtype=np.float32)[:, None] + 0.5
    dist = shape_distance(spec.shape, px, py, x * width, y * height, half * min(width, height))
    return np.clip(0.5 - dist, 0.0, 1.0).astype(np.float32)


def render_clip(
    spec: ClipSpec, frames: int, size: int, height: int | None = None, start: float = 0.0
) -> np.ndarray:
    """Render ``frames`` frames `size` pixels wide and `height` (default: `size`) high:
    uint8 (T, H, W, 3).

    Frame k shows the clip at time start + k / (frames - 1); a 1-frame clip (an image) is the first
    frame. ``start`` > 0 renders a continuation: the same motion at the same speed from a later
    state, past t = 1 where it runs on (objects may leave the frame or outgrow it; a shrinking
    object may vanish).
    """
    height = height or size
    if frames < 1 or min(size, height) < 8:
        raise ValueError(
            f"need frames >= 1 and sides >= 8, got frames={frames}, size={size}x{height}"
        )
    bg = np.asarray(BACKGROUND_RGB[spec.background], dtype=np.float32)
    fg = np.asarray(COLOR_RGB[spec.color], dtype=np.float32)
    out = np.empty((frames, height, size, 3), dtype=np.uint8)
    for k in range(frames):
        t = start + (k / (frames - 1) if frames > 1 else 0.0)
        alpha = coverage(spec, t, size, height)[..., None]
        out[k] = np.rint(bg + alpha * (fg - bg)).astype(np.uint8)
    return out
