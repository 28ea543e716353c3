"""The step cache around a DiT's block stack.

`StepCache.install` shadows the model's `run_blocks` on that instance: the plain forward and the
sequence-parallel one (hyv.engine.parallel.dit) both run the stack through it, so one hook serves
both, and the model code stays plain. Outside a `trajectory`, or with mode "off", the shadow calls
the plain method with the same arguments: the output is bit-identical.

Within a trajectory (one denoising run), step i is the i-th call:

* teacache: the first double block's modulated video input (LayerNorm, then its adaLN shift and
  scale) is compared with the previous step's; `TeaCachePolicy` decides; a computed step stores the
  stack's residual (output minus input, video and text tokens) and a skipped one adds it to its input.
* first_block: the first double block always runs; its video residual is compared with the one of
  the last computed step; `FirstBlockPolicy` decides whether the remaining blocks run or their
  cached residual is added.

Batched true CFG (uncond and cond in one batch) makes one joint decision: the metric is the largest
over the batch's samples, so a step is skipped only when every branch would skip it; the residuals
stay per sample. With sequence parallelism the metric's sums are all-reduced over the group (each
rank holds a shard of the video tokens) and the decision is agreed with one more all-reduce, so
every rank computes or skips the same steps.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import cast

import torch
import torch.distributed as dist

from hyv.engine.step_cache.config import StepCacheConfig
from hyv.engine.step_cache.policy import IDENTITY, FirstBlockPolicy, TeaCachePolicy
from hyv.models import ops
from hyv.models.dit import HunyuanVideoDiT
from hyv.models.dit_blocks import DoubleStreamBlock

logger = logging.getLogger(__name__)

LAYERNORM_EPS = 1e-6  # the double block's pre-attention LayerNorm


@dataclass
class StepCacheStats:
    """What one trajectory did: block-stack evaluations computed and skipped; with `record`, per
    step after the first, (first block's modulated-input rel-L1, block-stack output rel-L1)."""

    mode: str
    threshold: float | None
    computed: int = 0
    skipped: int = 0
    records: list[tuple[float, float]] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "threshold": self.threshold,
            "computed": self.computed,
            "skipped": self.skipped,
        }


@dataclass
class _Trajectory:
    config: StepCacheConfig
    total_steps: int
    record: bool
    stats: StepCacheStats
    policy: TeaCachePolicy | FirstBlockPolicy | None
    step: int = 0
    previous_modulated: torch.Tensor | None = None  # teacache / record: last step's modulated input
    previous_first_residual: torch.Tensor | None = None  # first_block: the last computed step's
    residual: torch.Tensor | None = None  # cached residual of the skipped part of the stack
    previous_output: torch.Tensor | None = None  # record: last step's stack output (video tokens)


AllReduce = Callable[[torch.Tensor], None]


def relative_l1(
    current: torch.Tensor, previous: torch.Tensor, valid: torch.Tensor, all_reduce: AllReduce | None = None
) -> float:
    """max over the batch of sum|current - previous| / sum|previous| over the valid video tokens.

    current, previous (B, L, D); valid (B, L) bool (a sequence-parallel shard's padding is False).
    `all_reduce` (a sum over the sequence-parallel group, in place) runs on the sums first: every
    rank gets the metric of the whole video."""
    weight = valid.to(torch.float64).unsqueeze(-1)  # (B, L, 1)
    num = ((current.double() - previous.double()).abs() * weight).sum(dim=(1, 2))  # (B,)
    den = (previous.double().abs() * weight).sum(dim=(1, 2))
    sums = torch.cat([num, den])
    if all_reduce is not None:
        all_reduce(sums)
    num, den = sums.chunk(2)
    ratios = torch.where(den > 0, num / den.clamp_min(1e-300), torch.where(num > 0, torch.inf, 0.0))
    return float(ratios.max())


class StepCache:
    """Step caching for one DiT (see the module docstring). `coefficients`: the model's TeaCache
    polynomial (bundle.json, `hyv calibrate-cache`); None = identity. A sequence-parallel rank joins
    its group with `join_group` (hyv.engine.parallel.serving.parallelize does)."""

    def __init__(self, model: HunyuanVideoDiT, coefficients: Sequence[float] | None = None) -> None:
        self.model = model
        self.coefficients = tuple(coefficients) if coefficients else IDENTITY
        self._all_reduce: AllReduce | None = None  # None: a single process
        self._group: dist.ProcessGroup | None = None
        self._plain: Callable[..., torch.Tensor] | None = None
        self._active: _Trajectory | None = None
        self._recording: list[tuple[float, float]] | None = None

    @classmethod
    def attach(cls, model: HunyuanVideoDiT, coefficients: Sequence[float] | None = None) -> StepCache:
        """The step cache installed on `model`: the one already there (a DiT shared by two pipelines
        of one bundle; its coefficients updated) or a new one."""
        installed = vars(model).get("run_blocks")
        cache = getattr(installed, "__self__", None)
        if isinstance(cache, cls):
            cache.coefficients = tuple(coefficients) if coefficients else IDENTITY
            return cache
        return cls(model, coefficients).install()

    def join_group(self, group: dist.ProcessGroup | None) -> None:
        """Make the decisions over a sequence-parallel group (None: the default group): the metric's
        sums are all-reduced and the decision agreed, so all ranks compute or skip together."""
        if dist.get_world_size(group) == 1:
            return
        self._group = group
        self._all_reduce = lambda sums: dist.all_reduce(sums, group=group)

    @property
    def installed(self) -> bool:
        return self._plain is not None

    def install(self) -> StepCache:
        if self._plain is not None:
            raise RuntimeError("this step cache is already installed")
        if "run_blocks" in vars(self.model):
            raise RuntimeError("the DiT's run_blocks is already replaced (another step cache?)")
        self._plain = self.model.run_blocks
        self.model.run_blocks = self._run_blocks  # type: ignore[method-assign]
        return self

    def uninstall(self) -> None:
        if self._plain is not None:
            del self.model.run_blocks
            self._plain = None

    @contextlib.contextmanager
    def recording(self) -> Iterator[list[tuple[float, float]]]:
        """Within this block, every uncached trajectory records its steps' (input, output) rel-L1s
        into the yielded list (calibration through the pipeline's own generate)."""
        records: list[tuple[float, float]] = []
        self._recording = records
        try:
            yield records
        finally:
            self._recording = None

    @contextlib.contextmanager
    def trajectory(
        self, config: StepCacheConfig | None, total_steps: int, record: bool = False
    ) -> Iterator[StepCacheStats]:
        """One denoising run of `total_steps` DiT calls: the cache state lives for this block only.
        `record` (calibration, mode off only) measures the rel-L1s of every step."""
        config = config or StepCacheConfig()
        if not self.installed:  # the plain DiT: nothing to cache, nothing counted
            if config.enabled or record:
                raise RuntimeError(f"cache {config.mode!r}: the step cache is not installed on this DiT")
            yield StepCacheStats(config.mode, config.threshold)
            return
        if record and config.enabled:
            raise ValueError("recording measures the uncached trajectory: use mode 'off' with record")
        if config.enabled and len(self.model.double_blocks) == 0:
            raise ValueError(
                f"cache {config.mode!r} needs a DiT with double-stream blocks (this one has none)"
            )
        policy: TeaCachePolicy | FirstBlockPolicy | None = None
        if config.mode == "teacache":
            assert config.threshold is not None  # filled by StepCacheConfig
            policy = TeaCachePolicy(config.threshold, total_steps, self.coefficients)
        elif config.mode == "first_block":
            assert config.threshold is not None
            policy = FirstBlockPolicy(config.threshold, total_steps)
        stats = StepCacheStats(config.mode, config.threshold)
        record = record or (self._recording is not None and not config.enabled)
        self._active = _Trajectory(config, total_steps, record, stats, policy)
        try:
            yield stats
        finally:
            self._active = None
            if self._recording is not None:
                self._recording.extend(stats.records)
            if config.enabled:
                logger.debug("step cache: %s", stats.summary())

    # --- the shadow of run_blocks -----------------------------------------------------------------

    @property
    def _plain_run_blocks(self) -> Callable[..., torch.Tensor]:
        if self._plain is None:
            raise RuntimeError("the step cache is not installed")
        return self._plain

    def _run_blocks(
        self,
        img: torch.Tensor,
        txt: torch.Tensor,
        vec: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        key_mask: torch.Tensor,
        skip_double: int = 0,
    ) -> torch.Tensor:
        assert self._plain is not None
        t = self._active
        if t is None or skip_double:
            return self._plain(img, txt, vec, cos, sin, key_mask, skip_double)
        step = t.step
        t.step += 1
        valid = key_mask[:, : img.shape[1]]  # (B, Li): False on a sequence-parallel shard's padding
        if t.config.mode == "first_block":
            x = self._first_block_step(t, step, img, txt, vec, cos, sin, key_mask, valid)
        elif t.config.mode == "teacache":
            x = self._teacache_step(t, step, img, txt, vec, cos, sin, key_mask, valid)
        else:
            if t.record:
                self._record_input(t, img, vec, valid)
            x = self._plain(img, txt, vec, cos, sin, key_mask)
            t.stats.computed += 1
        if t.record:
            output = x[:, : img.shape[1]]
            if t.previous_output is not None:
                t.stats.records[-1] = (
                    t.stats.records[-1][0],
                    relative_l1(output, t.previous_output, valid, self._all_reduce),
                )
            t.previous_output = output
        return x

    def _record_input(
        self, t: _Trajectory, img: torch.Tensor, vec: torch.Tensor, valid: torch.Tensor
    ) -> None:
        modulated = self._modulated_input(img, vec)
        if t.previous_modulated is not None:
            t.stats.records.append(
                (relative_l1(modulated, t.previous_modulated, valid, self._all_reduce), float("nan"))
            )
        t.previous_modulated = modulated

    def _modulated_input(self, img: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        """The first double block's modulated video input (B, Li, D), as that block computes it."""
        first = cast(DoubleStreamBlock, self.model.double_blocks[0])
        modulation = first.img_mod
        weight = modulation.linear.weight  # on the CPU between visits under block offload
        shift, scale = modulation(vec.to(weight.device, weight.dtype))[:2]
        return ops.layernorm_modulate(img, shift.to(img.device), scale.to(img.device), LAYERNORM_EPS)

    def _agree(self, compute: bool) -> bool:
        """The group's decision: compute when any rank would."""
        if self._all_reduce is None:
            return compute
        device = "cuda" if dist.get_backend(self._group) == "nccl" else "cpu"
        flag = torch.tensor([1 if compute else 0], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return bool(flag.item())

    def _decide(
        self, t: _Trajectory, step: int, rel_l1: float | None, cached: torch.Tensor | None, like: torch.Tensor
    ) -> bool:
        assert t.policy is not None
        wanted = t.policy.compute(step, rel_l1)
        if cached is None or cached.shape != like.shape:
            wanted = True  # nothing (or a residual of another shape) to reuse
        compute = self._agree(wanted)
        if compute and not wanted and isinstance(t.policy, TeaCachePolicy):
            t.policy.accumulated = 0.0  # another rank computed: this one did too
        return compute

    def _teacache_step(
        self,
        t: _Trajectory,
        step: int,
        img: torch.Tensor,
        txt: torch.Tensor,
        vec: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        key_mask: torch.Tensor,
        valid: torch.Tensor,
    ) -> torch.Tensor:
        modulated = self._modulated_input(img, vec)
        previous = t.previous_modulated
        rel_l1 = None
        if previous is not None and previous.shape == modulated.shape:
            rel_l1 = relative_l1(modulated, previous, valid, self._all_reduce)
        t.previous_modulated = modulated
        joint = torch.cat([img, txt], dim=1)  # (B, Li+Lt, D): the stack's input, video first
        if not self._decide(t, step, rel_l1, t.residual, joint):
            assert t.residual is not None
            t.stats.skipped += 1
            return joint + t.residual
        x = self._plain_run_blocks(img, txt, vec, cos, sin, key_mask)
        t.residual = x - joint
        t.stats.computed += 1
        return x

    def _first_block_step(
        self,
        t: _Trajectory,
        step: int,
        img: torch.Tensor,
        txt: torch.Tensor,
        vec: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        key_mask: torch.Tensor,
        valid: torch.Tensor,
    ) -> torch.Tensor:
        first = cast(DoubleStreamBlock, self.model.double_blocks[0])
        img1, txt1 = first(img, txt, vec, cos, sin, key_mask)
        first_residual = img1 - img  # (B, Li, D)
        previous = t.previous_first_residual
        rel_l1 = None
        if previous is not None and previous.shape == first_residual.shape:
            rel_l1 = relative_l1(first_residual, previous, valid, self._all_reduce)
        joint = torch.cat([img1, txt1], dim=1)  # the remaining blocks' input
        if not self._decide(t, step, rel_l1, t.residual, joint):
            assert t.residual is not None
            t.stats.skipped += 1
            return joint + t.residual
        t.previous_first_residual = first_residual
        x = self._plain_run_blocks(img1, txt1, vec, cos, sin, key_mask, 1)
        t.residual = x - joint
        t.stats.computed += 1
        return x
