"""Step caching: skip the DiT's block stack on denoising steps where it would barely change.

config (the per-request option, no torch: the API imports it), policy (the skip decisions on
numbers), runner (`StepCache`: installed on a DiT from outside, it measures and applies them),
calibrate (`hyv calibrate-cache`: the TeaCache polynomial of a model). docs/step_cache.md.
"""

from hyv.engine.step_cache.config import (
    CACHE_MODES,
    DEFAULT_THRESHOLDS,
    CacheMode,
    StepCacheConfig,
    parse_cache,
)

__all__ = ["CACHE_MODES", "DEFAULT_THRESHOLDS", "CacheMode", "StepCacheConfig", "parse_cache"]
