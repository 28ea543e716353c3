"""The per-request step-cache option: `"teacache"`, or `{"mode": "teacache", "threshold": 0.1}`.

No torch here: the API process validates the option without loading a model.
"""

from __future__ import annotations

import json
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

CacheMode = Literal["off", "teacache", "first_block"]
CACHE_MODES: tuple[str, ...] = get_args(CacheMode)
# teacache: the accumulated rescaled change of the first block's modulated input allowed before the
# stack runs again (TeaCache's HunyuanVideo setting 0.1 is its "1.6x" point). first_block: the
# relative change of the first block's residual under which the rest is skipped (ParaAttention's
# HunyuanVideo example uses 0.1 too). docs/step_cache.md has the measured trade-off.
DEFAULT_THRESHOLDS: dict[str, float] = {"teacache": 0.1, "first_block": 0.1}
MAX_THRESHOLD = 10.0


class StepCacheConfig(BaseModel):
    """A step-cache mode and its threshold (None for "off"; the mode's default when left out)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: CacheMode = "off"
    threshold: float | None = Field(default=None, gt=0.0, le=MAX_THRESHOLD, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _bare_mode(cls, value: Any) -> Any:
        if isinstance(value, str):  # a form field carries the object as JSON text
            return json.loads(value) if value.lstrip().startswith("{") else {"mode": value}
        return value

    @model_validator(mode="after")
    def _threshold_fits_mode(self) -> StepCacheConfig:
        if self.mode == "off" and self.threshold is not None:
            raise ValueError("cache: a threshold applies to mode 'teacache' or 'first_block', not 'off'")
        if self.mode != "off" and self.threshold is None:
            object.__setattr__(self, "threshold", DEFAULT_THRESHOLDS[self.mode])
        return self

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def describe(self) -> dict[str, object]:
        return {"mode": self.mode, "threshold": self.threshold}


def parse_cache(value: Any, threshold: float | None = None) -> StepCacheConfig:
    """A StepCacheConfig from a mode name (with an optional threshold), a dict or a config;
    ValueError naming the bad value otherwise (for the CLI and the settings)."""
    if isinstance(value, StepCacheConfig):
        return value if threshold is None else StepCacheConfig(mode=value.mode, threshold=threshold)
    raw: Any = value
    if isinstance(value, str):
        raw = {"mode": value.strip().lower()}
        if threshold is not None:
            raw["threshold"] = threshold
    try:
        return StepCacheConfig.model_validate(raw)
    except ValidationError as exc:
        detail = "; ".join(str(error["msg"]) for error in exc.errors())
        raise ValueError(
            f"cache {value!r} (threshold {threshold!r}) is not valid: {detail}; "
            f"modes: {', '.join(CACHE_MODES)}"
        ) from None
