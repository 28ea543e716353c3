"""The caption grammar of the synthetic dataset and its fixed held-out split.

Every caption reads exactly ``a {color} {shape} {motion} on a {background} background``; the
attribute lists are the ones the built-in text encoder's vocabulary is made of
(`hyv.models.text_encoder_builtin`). 7 colors x 3 shapes x 7 motions x 2 backgrounds = 294
combinations. A fixed 15% of them (44) never appear in training and are used to measure
compositional generalization; the split is chosen so that every single attribute value *and*
every pair of values of two different attributes still appears in training, so each held-out
combination is a new composition of parts the model has seen together.

`ClipSpec` adds the variety that does not show in the caption (start position, size, travel
distance, growth factor); `hyv.training.data.render` turns one into pixels.

One more motion, ``bouncing`` (`LORA_MOTIONS`), exists only for the demonstration LoRA adapter
(hyv/training/lora): the object falls from rest, bounces off the floor at mid-clip and rises back
to where it started. It is outside `MOTIONS`, so the base model's combinations, split and data
never contain it; its own 42 colour x shape x background combinations have their own split
(`bouncing_heldout_combinations`: 5 colour/shape pairs, on both backgrounds, never trained on).
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from typing import NamedTuple

from hyv.models.text_encoder_builtin import (
    CAPTION_BACKGROUNDS,
    CAPTION_COLORS,
    CAPTION_MOTIONS,
    CAPTION_SHAPES,
)

COLORS: tuple[str, ...] = CAPTION_COLORS
SHAPES: tuple[str, ...] = CAPTION_SHAPES
MOTIONS: tuple[str, ...] = CAPTION_MOTIONS
BACKGROUNDS: tuple[str, ...] = CAPTION_BACKGROUNDS

# Pure RGB colors, uint8 values.
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
    "white": (255, 255, 255),
}
BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {"black": (0, 0, 0), "gray": (128, 128, 128)}

# Unit direction of each motion in image coordinates (x to the right, y *down*).
MOTION_DIRECTION: dict[str, tuple[int, int]] = {
    "moving left": (-1, 0),
    "moving right": (1, 0),
    "moving up": (0, -1),
    "moving down": (0, 1),
}
STILL_MOTIONS: tuple[str, ...] = ("standing still",)
SCALE_MOTIONS: tuple[str, ...] = ("growing", "shrinking")
BOUNCING = "bouncing"
# Motions of LoRA training data only: never in `all_combinations` (the base model's grammar).
LORA_MOTIONS: tuple[str, ...] = (BOUNCING,)
CAPTION_MOTION_VALUES: tuple[str, ...] = (*MOTIONS, *LORA_MOTIONS)  # what a caption may name
BOUNCING_HELDOUT_PAIRS = 5  # colour/shape pairs of the bouncing split held out (on both backgrounds)
BOUNCING_SPLIT_SEED = "hyv-bouncing-split-v1"

HELDOUT_FRACTION = 0.15
SPLIT_SEED = "hyv-synthetic-split-v1"


class Attributes(NamedTuple):
    """The four captioned attributes of a clip (one grammar combination)."""

    color: str
    shape: str
    motion: str
    background: str


def _check_attributes(attrs: Attributes) -> None:
    for name, value, allowed in zip(
        Attributes._fields, attrs, (COLORS, SHAPES, CAPTION_MOTION_VALUES, BACKGROUNDS), strict=True
    ):
        if value not in allowed:
            raise ValueError(f"unknown {name} {value!r} (expected one of {', '.join(allowed)})")


@dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render one clip.

    Geometry is in fractions of the frame side (resolution independent), image coordinates with
    y down. ``x, y`` is the object's bounding-box center at the first frame and ``size`` its
    half-extent there (circle radius, half the square side, half the triangle's base and height).
    ``travel`` is how far a moving object goes over the whole clip (0 otherwise; for bouncing
    the drop from the start to the floor) and ``scale`` the last frame's size over the first's
    (> 1 growing, < 1 shrinking, 1 otherwise).
    """

    color: str
    shape: str
    motion: str
    background: str
    x: float = 0.5
    y: float = 0.5
    size: float = 0.12
    travel: float = 0.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        _check_attributes(self.attributes)
        if self.size <= 0 or self.scale <= 0 or self.travel < 0:
            raise ValueError(f"size and scale must be > 0 and travel >= 0, got {self}")

    @property
    def attributes(self) -> Attributes:
        return Attributes(self.color, self.shape, self.motion, self.background)

    def state(self, t: float) -> tuple[float, float, float]:
        """Center x, center y and half-extent at clip time ``t`` in [0, 1].

        Linear motion, except bouncing: free fall from rest at (x, y) under constant gravity, an
        elastic bounce at t = 0.5 at depth y + travel (image y grows downward), the mirror-image
        rise back to y at t = 1: y(t) = y + travel * (1 - (1 - 2t)^2)."""
        half = self.size * (1.0 + (self.scale - 1.0) * t)
        if self.motion == BOUNCING:
            return self.x, self.y + self.travel * (1.0 - (1.0 - 2.0 * t) ** 2), half
        dx, dy = MOTION_DIRECTION.get(self.motion, (0, 0))
        return self.x + dx * self.travel * t, self.y + dy * self.travel * t, half


def caption(spec: ClipSpec | Attributes) -> str:
    """The caption of a clip, exactly in the grammar's form."""
    a = spec.attributes if isinstance(spec, ClipSpec) else spec
    _check_attributes(a)
    return f"a {a.color} {a.shape} {a.motion} on a {a.background} background"


def _take(words: list[str], pos: int, options: tuple[str, ...], what: str, text: str) -> tuple[str, int]:
    """Match one of ``options`` (possibly multi-word) at ``words[pos:]``; longest match wins."""
    for option in sorted(options, key=lambda o: -len(o.split())):
        n = len(option.split())
        if words[pos : pos + n] == option.split():
            return option, pos + n
    if pos >= len(words):
        got = "<end of caption>"
    else:  # show as many words as the option that starts like this one ("moving sideways")
        width = max([len(o.split()) for o in options if o.split()[0] == words[pos]], default=1)
        got = " ".join(words[pos : pos + width])
    raise ValueError(f"caption {text!r}: unknown {what} at {got!r} (expected one of {', '.join(options)})")


def _expect(words: list[str], pos: int, word: str, text: str) -> int:
    if pos >= len(words) or words[pos] != word:
        got = words[pos] if pos < len(words) else "<end of caption>"
        raise ValueError(f"caption {text!r}: expected {word!r} at word {pos + 1}, got {got!r}")
    return pos + 1


def parse_caption(text: str) -> Attributes:
    """Parse a grammar caption. Case and runs of whitespace are normalized; anything else outside
    the grammar raises ValueError naming the problem (the unknown word, or the missing one)."""
    if not isinstance(text, str):
        raise ValueError(f"caption must be a string, got {type(text).__name__}")
    words = text.lower().split()
    pos = _expect(words, 0, "a", text)
    color, pos = _take(words, pos, COLORS, "color", text)
    shape, pos = _take(words, pos, SHAPES, "shape", text)
    motion, pos = _take(words, pos, CAPTION_MOTION_VALUES, "motion", text)
    pos = _expect(words, pos, "on", text)
    pos = _expect(words, pos, "a", text)
    background, pos = _take(words, pos, BACKGROUNDS, "background", text)
    pos = _expect(words, pos, "background", text)
    if pos != len(words):
        raise ValueError(f"caption {text!r}: unexpected trailing words {' '.join(words[pos:])!r}")
    return Attributes(color, shape, motion, background)


def all_combinations() -> list[Attributes]:
    """All 294 attribute combinations in a fixed (lexicographic by list order) order."""
    return [Attributes(*c) for c in itertools.product(COLORS, SHAPES, MOTIONS, BACKGROUNDS)]


def _pairs(a: Attributes) -> list[tuple[int, str, int, str]]:
    return [(i, a[i], j, a[j]) for i, j in itertools.combinations(range(4), 2)]


def _compute_heldout() -> tuple[Attributes, ...]:
    """Deterministic: rank combinations by a SHA-256 of (seed, caption), then take them in that
    order, skipping any whose removal would leave a value or a pair of values unseen in training."""
    combos = all_combinations()
    target = round(HELDOUT_FRACTION * len(combos))
    ranked = sorted(combos, key=lambda a: hashlib.sha256(f"{SPLIT_SEED}:{caption(a)}".encode()).hexdigest())
    value_count: dict[tuple[int, str], int] = {}
    pair_count: dict[tuple[int, str, int, str], int] = {}
    for a in combos:
        for i, v in enumerate(a):
            value_count[(i, v)] = value_count.get((i, v), 0) + 1
        for p in _pairs(a):
            pair_count[p] = pair_count.get(p, 0) + 1
    held: list[Attributes] = []
    for a in ranked:
        if len(held) == target:
            break
        if any(pair_count[p] <= 1 for p in _pairs(a)) or any(
            value_count[(i, v)] <= 1 for i, v in enumerate(a)
        ):
            continue
        held.append(a)
        for i, v in enumerate(a):
            value_count[(i, v)] -= 1
        for p in _pairs(a):
            pair_count[p] -= 1
    order = {a: k for k, a in enumerate(combos)}
    return tuple(sorted(held, key=order.__getitem__))


_HELDOUT: tuple[Attributes, ...] = _compute_heldout()
_HELDOUT_SET = frozenset(_HELDOUT)


def heldout_combinations() -> list[Attributes]:
    """The fixed held-out combinations (44 of 294), in `all_combinations` order."""
    return list(_HELDOUT)


def train_combinations() -> list[Attributes]:
    """Every combination not held out (250 of 294), in `all_combinations` order."""
    return [a for a in all_combinations() if a not in _HELDOUT_SET]


def training_captions(count: int) -> list[str]:
    """`count` captions of training combinations, spread evenly over them (never a held-out one):
    prompts that measure a model without touching its evaluation set (`hyv calibrate-cache`)."""
    combos = train_combinations()
    if not 1 <= count <= len(combos):
        raise ValueError(f"prompts must be in [1, {len(combos)}], got {count}")
    return [caption(combos[j * len(combos) // count]) for j in range(count)]


def is_heldout(attrs: Attributes | ClipSpec) -> bool:
    a = attrs.attributes if isinstance(attrs, ClipSpec) else attrs
    return a in _HELDOUT_SET


def bouncing_combinations() -> list[Attributes]:
    """The 42 bouncing combinations (colour x shape x background), in list order."""
    return [Attributes(c, s, BOUNCING, b) for c, s, b in itertools.product(COLORS, SHAPES, BACKGROUNDS)]


def _compute_bouncing_heldout_pairs() -> tuple[tuple[str, str], ...]:
    """`BOUNCING_HELDOUT_PAIRS` colour/shape pairs, ranked by a SHA-256 of (seed, pair) and taken in
    that order, skipping a pair whose colour is already held out or whose shape is held out twice:
    every colour keeps 2 of its 3 shapes in training, every shape at least 5 of its 7 colours."""
    pairs = list(itertools.product(COLORS, SHAPES))
    ranked = sorted(
        pairs, key=lambda p: hashlib.sha256(f"{BOUNCING_SPLIT_SEED}:{p[0]} {p[1]}".encode()).hexdigest()
    )
    held: list[tuple[str, str]] = []
    for color, shape in ranked:
        if len(held) == BOUNCING_HELDOUT_PAIRS:
            break
        if any(c == color for c, _ in held) or sum(s == shape for _, s in held) >= 2:
            continue
        held.append((color, shape))
    return tuple(sorted(held, key=pairs.index))


BOUNCING_HELDOUT_PAIR_LIST: tuple[tuple[str, str], ...] = _compute_bouncing_heldout_pairs()


def bouncing_heldout_combinations() -> list[Attributes]:
    """The held-out bouncing combinations: `BOUNCING_HELDOUT_PAIR_LIST` on both backgrounds (10)."""
    return [a for a in bouncing_combinations() if (a.color, a.shape) in BOUNCING_HELDOUT_PAIR_LIST]


def bouncing_train_combinations() -> list[Attributes]:
    """The bouncing combinations the LoRA adapter trains on (32 of 42)."""
    return [a for a in bouncing_combinations() if (a.color, a.shape) not in BOUNCING_HELDOUT_PAIR_LIST]
