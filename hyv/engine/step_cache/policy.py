"""The two skip decisions, on plain numbers (the runner measures; these decide).

Both always compute the first step (nothing is cached yet) and the last one (it sets the final
video's details, and a skipped last step cannot be corrected by any later one).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IDENTITY: tuple[float, ...] = (1.0, 0.0)  # polyval coefficients (highest power first) of y = x


def rescale(coefficients: Sequence[float], rel_l1: float) -> float:
    """TeaCache's rescaling: the polynomial fitted from the input change to the output change, at
    least 0 (a degree-4 fit can dip below zero outside the changes it was fitted on; a negative
    estimate would pay the accumulated change back and skip forever)."""
    return max(0.0, float(np.polyval(np.asarray(coefficients, dtype=np.float64), rel_l1)))


class TeaCachePolicy:
    """TeaCache: accumulate the rescaled relative L1 change of the first block's modulated input
    from step to step; while the sum stays under `threshold`, reuse the stack's cached residual;
    once it reaches it, compute and start the sum again."""

    def __init__(self, threshold: float, total_steps: int, coefficients: Sequence[float] = IDENTITY) -> None:
        if threshold <= 0:
            raise ValueError(f"teacache threshold must be positive, got {threshold}")
        self.threshold = threshold
        self.total_steps = total_steps
        self.coefficients = tuple(float(c) for c in coefficients)
        self.accumulated = 0.0

    def compute(self, step: int, rel_l1: float | None) -> bool:
        """Whether step `step` (0-based) runs the block stack; rel_l1: the input change since the
        previous step (None on the first)."""
        if rel_l1 is None or step == 0 or step >= self.total_steps - 1:
            self.accumulated = 0.0
            return True
        self.accumulated += rescale(self.coefficients, rel_l1)
        if self.accumulated < self.threshold:
            return False
        self.accumulated = 0.0
        return True


class FirstBlockPolicy:
    """First-block cache: skip the remaining blocks while the first block's residual differs from
    the one of the last computed step by less than `threshold` (relative L1)."""

    def __init__(self, threshold: float, total_steps: int) -> None:
        if threshold <= 0:
            raise ValueError(f"first_block threshold must be positive, got {threshold}")
        self.threshold = threshold
        self.total_steps = total_steps

    def compute(self, step: int, rel_l1: float | None) -> bool:
        if rel_l1 is None or step == 0 or step >= self.total_steps - 1:
            return True
        return rel_l1 >= self.threshold
