"""LoRA adapters for the HunyuanVideo DiT, read from the formats they are shared in.

Each adapted weight W (out, in) gets delta = up @ down * alpha / rank, where down (A) is
(rank, in) and up (B) is (out, rank). The formats, told apart per key:

* native (`hyv train lora`) and "original" names: `<our module>.lora_A.weight`, `.lora_B.weight`,
  optional `<our module>.alpha` (a scalar; absent: alpha = rank). Our module names are Tencent's,
  so the same keys with a `diffusion_model.` or `transformer.` prefix (ComfyUI, musubi-tuner's
  converted output) read the same way;
* diffusers / PEFT: `transformer.<diffusers module>.lora_A.weight` / `.lora_B.weight` (the prefix
  optional). Diffusers splits what Tencent fuses (to_q / to_k / to_v, and proj_mlp in the single
  blocks): a LoRA on to_q is the q rows of our fused qkv delta, a part without a LoRA adds zero.
  The final layer's modulation halves are swapped between the two layouts, so its up rows are too.
  The mapping is hyv.models.dit_loading's for the weights themselves (`diffusers_plan`);
* kohya / musubi-tuner: `lora_unet_<Tencent module, dots as underscores>.lora_down.weight`,
  `.lora_up.weight`, `.alpha`;
* the official HunyuanVideo-I2V LoRA: the kohya layout under `Hunyuan_video_I2V_lora_`; Tencent's
  loader (hyvideo/utils/lora_utils.py) adds up @ down and skips `.alpha`, and so do we.

Adapters only read here: `LoraAdapter.delta` gives a weight's delta, hyv.engine.lora applies them.
Everything wrong with a file (unknown keys, shapes that do not fit the model, a rank that differs
between down and up, NaN/inf) raises one LoraError naming what and where, before any weight is
touched.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from hyv.engine.lora_folder import split_lora_key
from hyv.models.checkpoint_io import read_state_dict
from hyv.models.dit import HunyuanVideoDiT
from hyv.models.dit_loading import diffusers_plan

KOHYA_PREFIX = "lora_unet_"
OFFICIAL_I2V_PREFIX = "Hunyuan_video_I2V_lora_"
DOTTED_PREFIXES = ("transformer.", "diffusion_model.")
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"  # diffusers' safetensors header entry (r, lora_alpha)
MAX_NAMED = 8  # how many offending keys an error message lists
NOT_ADAPTABLE = "not-adaptable"


class LoraError(ValueError):
    """An adapter that cannot be applied to this model; the message says which keys and why."""


@dataclass(frozen=True)
class LoraTarget:
    """Where one source module's delta lands: rows [start, stop) of our `module`'s weight;
    `swap_halves`: the source orders the two halves of those rows the other way round."""

    module: str
    start: int
    stop: int
    swap_halves: bool = False


@dataclass(frozen=True)
class LoraTargets:
    """The adaptable weights of one DiT (any device, meta included) and the names each format uses
    for them."""

    shapes: dict[str, tuple[int, int]]  # our Linear module -> (out, in)
    diffusers: dict[str, LoraTarget]  # diffusers module -> its rows of ours
    underscored: dict[str, str]  # Tencent name with dots as underscores -> our module
    not_adaptable: frozenset[str] = frozenset()  # linear-like layers a LoRA cannot merge into (FP8)

    @classmethod
    def of(cls, model: nn.Module) -> LoraTargets:
        dit = find_dit(model)
        shapes: dict[str, tuple[int, int]] = {}
        other: set[str] = set()
        for name, module in dit.named_modules():
            if isinstance(module, nn.Linear):
                shapes[name] = (module.out_features, module.in_features)
            elif hasattr(module, "in_features") and hasattr(module, "out_features"):
                other.add(name)
        diffusers: dict[str, LoraTarget] = {}
        for name, (out_features, _) in shapes.items():
            names, sizes, swap = diffusers_plan(f"{name}.weight", dit.config)
            sizes = sizes or [out_features]
            start = 0
            for diffusers_key, size in zip(names, sizes, strict=True):
                diffusers[diffusers_key.removesuffix(".weight")] = LoraTarget(name, start, start + size, swap)
                start += size
        underscored = {name.replace(".", "_"): name for name in [*shapes, *other]}
        return cls(shapes, diffusers, underscored, frozenset(other))


def find_dit(model: nn.Module) -> HunyuanVideoDiT:
    """The HunyuanVideoDiT itself, also inside a wrapper (the sequence-parallel one)."""
    for module in model.modules():
        if isinstance(module, HunyuanVideoDiT):
            return module
    raise TypeError(f"{type(model).__name__} holds no HunyuanVideoDiT")


@dataclass(frozen=True)
class LoraPart:
    """One low-rank pair on rows [start, stop) of a weight; `up` carries alpha / rank."""

    start: int
    stop: int
    down: torch.Tensor  # (rank, in), float32
    up: torch.Tensor  # (stop - start, rank), float32


@dataclass
class LoraAdapter:
    """A LoRA adapter mapped onto our DiT's module names."""

    name: str
    format: str
    parts: dict[str, list[LoraPart]] = field(default_factory=dict)  # our module -> its parts
    metadata: dict[str, str] = field(default_factory=dict)  # the safetensors header's string entries

    @property
    def modules(self) -> list[str]:
        return sorted(self.parts)

    @property
    def num_parameters(self) -> int:
        return sum(p.down.numel() + p.up.numel() for parts in self.parts.values() for p in parts)

    def delta(self, module: str, shape: tuple[int, int], device: torch.device | str = "cpu") -> torch.Tensor:
        """The weight delta (out, in) in float32 that this adapter adds to `module` at scale 1."""
        out = torch.zeros(shape, dtype=torch.float32, device=device)
        for part in self.parts.get(module, []):
            out[part.start : part.stop] += part.up.to(device) @ part.down.to(device)
        return out


@dataclass
class _Pair:
    source: str  # the module as the file names it
    target: LoraTarget
    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    alpha: torch.Tensor | None = None
    ignore_alpha: bool = False
    keys: list[str] = field(default_factory=list)


def _locate(source: str, targets: LoraTargets) -> tuple[LoraTarget | None, str, bool]:
    """(where a source module lands or None, its format, whether its alpha is ignored)."""
    for prefix, fmt, ignore_alpha in (
        (KOHYA_PREFIX, "kohya", False),
        (OFFICIAL_I2V_PREFIX, "official-i2v", True),
    ):
        if source.startswith(prefix):
            name = targets.underscored.get(source[len(prefix) :])
            if name is None or name in targets.not_adaptable:
                return None, NOT_ADAPTABLE if name else fmt, ignore_alpha
            return LoraTarget(name, 0, targets.shapes[name][0]), fmt, ignore_alpha
    for prefix in DOTTED_PREFIXES:
        if source.startswith(prefix):
            source = source[len(prefix) :]
            break
    if source in targets.shapes:
        return LoraTarget(source, 0, targets.shapes[source][0]), "native", False
    if source in targets.diffusers:
        return targets.diffusers[source], "diffusers", False
    return None, NOT_ADAPTABLE if source in targets.not_adaptable else "unknown", False


def _diffusers_alpha_scale(metadata: Mapping[str, str] | None) -> float | None:
    """alpha / r from diffusers' adapter metadata (PEFT's LoraConfig), if the file carries it."""
    if not metadata or DIFFUSERS_METADATA_KEY not in metadata:
        return None
    try:
        config = json.loads(metadata[DIFFUSERS_METADATA_KEY])
        if config.get("alpha_pattern") or config.get("rank_pattern"):
            raise LoraError("diffusers adapter metadata with alpha_pattern/rank_pattern is not supported")
        return float(config["lora_alpha"]) / float(config["r"])
    except (ValueError, KeyError, TypeError, ZeroDivisionError) as exc:
        if isinstance(exc, LoraError):
            raise
        raise LoraError(f"unreadable {DIFFUSERS_METADATA_KEY} in the safetensors header: {exc}") from None


def _named(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_NAMED])
    return shown + (f" (and {len(items) - MAX_NAMED} more)" if len(items) > MAX_NAMED else "")


def parse_lora(
    state_dict: Mapping[str, torch.Tensor],
    targets: LoraTargets,
    name: str = "adapter",
    metadata: Mapping[str, str] | None = None,
) -> LoraAdapter:
    """Map an adapter's tensors onto `targets`; LoraError lists every problem found."""
    if not state_dict:
        raise LoraError(f"LoRA {name!r} holds no tensors")
    pairs: dict[str, _Pair] = {}
    unknown: list[str] = []
    fp8: list[str] = []  # on layers held in FP8 (hyv.models.fp8): no float weight to merge into
    unsupported: list[str] = []
    formats: set[str] = set()
    for key, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            unsupported.append(f"{key} (not a tensor)")
            continue
        split = split_lora_key(key)
        if split is None:
            if "dora_scale" in key or key.endswith(".bias"):
                unsupported.append(key)
            else:
                unknown.append(key)
            continue
        source, factor = split
        target, fmt, ignore_alpha = _locate(source, targets)
        if target is None:
            (fp8 if fmt == NOT_ADAPTABLE else unknown).append(key)
            continue
        formats.add(fmt)
        pair = pairs.setdefault(source, _Pair(source, target, ignore_alpha=ignore_alpha))
        setattr(pair, factor, tensor)
        pair.keys.append(key)
    problems: list[str] = []
    if unknown:
        problems.append(f"keys that name no adaptable layer of this DiT: {_named(sorted(unknown))}")
    if fp8:
        problems.append(
            f"keys on layers this worker holds in FP8, which take no LoRA (serve without dit_dtype fp8): "
            f"{_named(sorted(fp8))}"
        )
    if unsupported:
        problems.append(f"unsupported entries (LoRA bias, DoRA): {_named(sorted(unsupported))}")
    metadata_scale = _diffusers_alpha_scale(metadata)
    adapter = LoraAdapter(name, "+".join(sorted(formats)) or "unknown", metadata=dict(metadata or {}))
    covered: dict[str, list[tuple[int, int, str]]] = {}
    for pair in pairs.values():
        part, problem = _checked_part(pair, targets, metadata_scale)
        if problem:
            problems.append(problem)
            continue
        assert part is not None
        for start, stop, other in covered.get(pair.target.module, []):
            if start < part.stop and part.start < stop:
                problems.append(
                    f"{pair.source} and {other} both adapt rows {start}:{stop} of {pair.target.module}"
                )
        covered.setdefault(pair.target.module, []).append((part.start, part.stop, pair.source))
        adapter.parts.setdefault(pair.target.module, []).append(part)
    if problems:
        raise LoraError(f"LoRA {name!r} does not fit this model: " + "; ".join(problems))
    return adapter


def _checked_part(
    pair: _Pair, targets: LoraTargets, metadata_scale: float | None
) -> tuple[LoraPart | None, str | None]:
    target = pair.target
    where = f"{pair.source} (-> {target.module} rows {target.start}:{target.stop})"
    if pair.down is None or pair.up is None:
        missing = "down (lora_A)" if pair.down is None else "up (lora_B)"
        return None, f"{where}: {missing} is missing"
    down, up = pair.down, pair.up
    out_features, in_features = targets.shapes[target.module]
    rows = target.stop - target.start
    if down.ndim != 2 or up.ndim != 2:
        return None, f"{where}: down {tuple(down.shape)} and up {tuple(up.shape)} must be matrices"
    if down.shape[0] != up.shape[1]:
        return None, (
            f"{where}: rank mismatch, down {tuple(down.shape)} has rank {down.shape[0]}, "
            f"up {tuple(up.shape)} has {up.shape[1]}"
        )
    if down.shape[1] != in_features or up.shape[0] != rows:
        return None, (
            f"{where}: wrong shapes, down {tuple(down.shape)} and up {tuple(up.shape)}; the layer needs "
            f"down (rank, {in_features}) and up ({rows}, rank) (weight {out_features}x{in_features})"
        )
    for label, tensor in (("down", down), ("up", up)):
        if not tensor.is_floating_point():
            return None, f"{where}: {label} has dtype {tensor.dtype}, not a float"
        if not bool(torch.isfinite(tensor).all()):
            return None, f"{where}: {label} holds NaN or inf"
    rank = down.shape[0]
    scale = 1.0
    if pair.alpha is not None and not pair.ignore_alpha:
        if pair.alpha.numel() != 1:
            return None, f"{where}: alpha has shape {tuple(pair.alpha.shape)}, not a scalar"
        alpha = float(pair.alpha.reshape(()).item())
        if not math.isfinite(alpha):
            return None, f"{where}: alpha is {alpha}"
        scale = alpha / rank
    elif metadata_scale is not None and not pair.ignore_alpha:
        scale = metadata_scale
    up32 = up.to(torch.float32) * scale
    if target.swap_halves:
        first, second = up32.chunk(2, dim=0)
        up32 = torch.cat([second, first], dim=0)
    return LoraPart(target.start, target.stop, down.to(torch.float32).contiguous(), up32.contiguous()), None


def read_lora_file(path: str | Path, targets: LoraTargets, name: str | None = None) -> LoraAdapter:
    """Read and map an adapter file (.safetensors, or a torch .pt/.bin)."""
    path = Path(path)
    name = name or path.stem
    metadata: dict[str, str] | None = None
    if path.suffix == ".safetensors" and path.is_file():
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = dict(handle.metadata() or {})
        except (SafetensorError, OSError) as exc:
            raise LoraError(f"LoRA {name!r}: cannot read {path.name} (truncated or corrupt?): {exc}") from exc
    try:
        state_dict = read_state_dict(path)
    except ValueError as exc:
        raise LoraError(f"LoRA {name!r}: {exc}") from exc
    return parse_lora(state_dict, targets, name, metadata)
