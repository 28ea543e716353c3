"""LoRA on the DiT's Linear layers, applied from outside the model: training hooks, the native
adapter file, and merging into a copy of the DiT.

A LoRA adapter adds ``scale * (alpha / rank) * B @ A`` to the weight W (out, in) of each target
Linear, with A (rank, in) and B (out, rank). Targets are the DiT's own module paths
("double_blocks.0.img_attn_qkv"), chosen by glob patterns (`fnmatch`) over the Linear modules.

* Training (`LoRAAdapter` + `adapted_forward`): the DiT stays untouched and frozen; each forward
  runs it (`torch.func.functional_call`) with W + (alpha / rank) * B @ A in place of each target
  weight, so only A and B receive gradients. B starts at zero, so an untrained adapter is exactly
  the base model.
* The native file (`save_adapter` / `read_adapter`): safetensors with, per target,
  ``<path>.lora_A.weight`` (rank, in), ``<path>.lora_B.weight`` (out, rank) and ``<path>.alpha``
  (a scalar tensor), plus string metadata (`ADAPTER_FORMAT`, base model, rank, alpha, targets,
  the trigger caption template, steps).
* Sampling with an adapter (`merged_copy`): W + scale * (alpha / rank) * B @ A written into a deep
  copy of the DiT; the DiT passed in is never modified. Serving-time application lives elsewhere.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

ADAPTER_FORMAT = "hyv-lora"
# The attention and MLP projections of every transformer block (not the modulation, embedders or
# the final layer): what community HunyuanVideo LoRAs target too.
DEFAULT_TARGETS: tuple[str, ...] = (
    "double_blocks.*.img_attn_qkv",
    "double_blocks.*.img_attn_proj",
    "double_blocks.*.img_mlp.fc1",
    "double_blocks.*.img_mlp.fc2",
    "double_blocks.*.txt_attn_qkv",
    "double_blocks.*.txt_attn_proj",
    "double_blocks.*.txt_mlp.fc1",
    "double_blocks.*.txt_mlp.fc2",
    "single_blocks.*.linear1",
    "single_blocks.*.linear2",
)
_A, _B, _ALPHA = ".lora_A.weight", ".lora_B.weight", ".alpha"


def linear_paths(model: nn.Module) -> list[str]:
    """The module paths of every nn.Linear in `model`, in module order."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def resolve_targets(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """The Linear module paths matching any of `patterns` (fnmatch globs over the full path), in
    module order. ValueError when there are no patterns or one of them matches no Linear."""
    if not patterns:
        raise ValueError("LoRA needs at least one target pattern")
    linears = linear_paths(model)
    for pattern in patterns:
        if not fnmatch.filter(linears, pattern):
            examples = ", ".join(linears[:4])
            raise ValueError(
                f"LoRA target {pattern!r} matches no Linear module of the DiT "
                f"(paths look like {examples}, ...)"
            )
    return [path for path in linears if any(fnmatch.fnmatchcase(path, p) for p in patterns)]


def _slot(path: str) -> str:
    return path.replace(".", "__")  # ModuleDict keys cannot hold dots


class LoRAAdapter(nn.Module):
    """A and B of every target (fp32 parameters); see the module docstring."""

    def __init__(
        self,
        shapes: dict[str, tuple[int, int]],
        rank: int,
        alpha: float,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"LoRA rank must be an int >= 1, got {rank!r}")
        if not math.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"LoRA alpha must be a finite number > 0, got {alpha!r}")
        self.rank, self.alpha = rank, float(alpha)
        self.paths = list(shapes)
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        for path, (out_features, in_features) in shapes.items():
            a = torch.empty(rank, in_features)
            # PEFT's init: A like nn.Linear's default (kaiming uniform, a = sqrt(5)), B zero.
            bound = 1.0 / math.sqrt(in_features)
            a.uniform_(-bound, bound, generator=generator)
            self.lora_A[_slot(path)] = nn.Parameter(a)
            self.lora_B[_slot(path)] = nn.Parameter(torch.zeros(out_features, rank))

    @classmethod
    def for_model(
        cls, model: nn.Module, patterns: Sequence[str], rank: int, alpha: float, seed: int = 0
    ) -> LoRAAdapter:
        modules = dict(model.named_modules())
        shapes = {}
        for path in resolve_targets(model, patterns):
            weight = modules[path].weight  # type: ignore[union-attr]
            shapes[path] = (int(weight.shape[0]), int(weight.shape[1]))
        return cls(shapes, rank, alpha, torch.Generator().manual_seed(seed))

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def factors(self, path: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lora_A[_slot(path)], self.lora_B[_slot(path)]

    def tensors(self) -> dict[str, torch.Tensor]:
        """The native file's tensors (detached, fp32, contiguous, on the CPU)."""
        out: dict[str, torch.Tensor] = {}
        for path in self.paths:
            a, b = self.factors(path)
            out[path + _A] = a.detach().float().cpu().contiguous()
            out[path + _B] = b.detach().float().cpu().contiguous()
            out[path + _ALPHA] = torch.tensor(self.alpha, dtype=torch.float32)
        return out


def adapted_weights(model: nn.Module, adapter: LoRAAdapter) -> dict[str, torch.Tensor]:
    """``{"<path>.weight": W + (alpha / rank) * B @ A}`` for every target, differentiable in A and B:
    what `torch.func.functional_call(model, adapted_weights(...), args)` runs the model with. The
    whole weight is replaced, not the layer's output, so a layer the model reads by rows
    (`single_blocks.*.linear1`, hyv.models.fp8.linear_rows) gets its update too."""
    modules = dict(model.named_modules())
    weights = {}
    for path in adapter.paths:
        module = modules.get(path)
        if not isinstance(module, nn.Linear):
            raise ValueError(f"LoRA target {path!r} is not a Linear module of this model")
        a, b = adapter.factors(path)
        weights[f"{path}.weight"] = module.weight + adapter.scaling * (b @ a).to(module.weight.dtype)
    return weights


def adapted_forward(model: nn.Module, adapter: LoRAAdapter, *args: Any) -> Any:
    """`model(*args)` with the adapter's update in its target weights; `model` is not modified."""
    return torch.func.functional_call(model, adapted_weights(model, adapter), args)


@dataclass(frozen=True)
class AdapterFile:
    """A native adapter file read back: per target (A (rank, in), B (out, rank), alpha), and metadata."""

    layers: dict[str, tuple[torch.Tensor, torch.Tensor, float]]
    metadata: dict[str, str]

    @property
    def rank(self) -> int:
        return int(next(iter(self.layers.values()))[0].shape[0])


def save_adapter(adapter: LoRAAdapter, path: Path, metadata: dict[str, Any]) -> Path:
    """Write the native file; `metadata` values become strings (JSON for lists and dicts)."""
    header = {"format": ADAPTER_FORMAT, "rank": str(adapter.rank), "alpha": repr(adapter.alpha)}
    for key, value in metadata.items():
        header[key] = value if isinstance(value, str) else json.dumps(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(adapter.tensors(), str(tmp), metadata=header)
    tmp.replace(path)
    return path


def read_adapter(path: Path) -> AdapterFile:
    """Read a native adapter file; ValueError naming the file and the first problem (a missing
    factor, mismatched ranks, a non-finite value, another format)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"cannot read LoRA adapter {path}: {exc}") from exc
    if metadata.get("format") != ADAPTER_FORMAT:
        raise ValueError(
            f"{path} is not a {ADAPTER_FORMAT} adapter (metadata format={metadata.get('format')!r})"
        )
    layers: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    for key in sorted(tensors):
        if not key.endswith(_A):
            if not key.endswith((_B, _ALPHA)):
                raise ValueError(f"{path}: unexpected tensor {key!r}")
            continue
        module = key[: -len(_A)]
        a, b, alpha = tensors[key], tensors.get(module + _B), tensors.get(module + _ALPHA)
        if b is None or alpha is None:
            raise ValueError(f"{path}: {module!r} lacks its lora_B.weight or alpha")
        if a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0] or alpha.numel() != 1:
            raise ValueError(
                f"{path}: {module!r} has A {tuple(a.shape)}, B {tuple(b.shape)}, alpha {tuple(alpha.shape)}; "
                "expected A (rank, in), B (out, rank) and a scalar alpha"
            )
        if not (torch.isfinite(a).all() and torch.isfinite(b).all() and torch.isfinite(alpha).all()):
            raise ValueError(f"{path}: {module!r} holds NaN or infinite values")
        layers[module] = (a.float(), b.float(), float(alpha))
    if not layers:
        raise ValueError(f"{path} holds no LoRA layers")
    orphans = sorted(k for k in tensors if k.endswith(_B) and k[: -len(_B)] not in layers)
    if orphans:
        raise ValueError(f"{path}: {orphans[0]!r} has no lora_A.weight")
    ranks = {a.shape[0] for a, _, _ in layers.values()}
    if len(ranks) != 1:
        raise ValueError(f"{path}: layers of different ranks {sorted(ranks)}")
    return AdapterFile(layers, metadata)


def merged_copy(model: nn.Module, adapter: AdapterFile, scale: float = 1.0) -> nn.Module:
    """A deep copy of `model` with W + scale * (alpha / rank) * B @ A in every adapted Linear
    (computed in fp32, stored in the weight's dtype); `model` itself is not touched. ValueError for
    a layer the model lacks or whose shape differs."""
    if not math.isfinite(scale):
        raise ValueError(f"LoRA scale must be finite, got {scale!r}")
    merged = copy.deepcopy(model)
    modules = dict(merged.named_modules())
    with torch.no_grad():
        for path, (a, b, alpha) in adapter.layers.items():
            module = modules.get(path)
            if not isinstance(module, nn.Linear):
                raise ValueError(f"LoRA layer {path!r} is not a Linear module of this DiT")
            expected = (b.shape[0], a.shape[1])
            if tuple(module.weight.shape) != expected:
                raise ValueError(
                    f"LoRA layer {path!r} is {expected[0]}x{expected[1]} (out x in) but the DiT's is "
                    f"{tuple(module.weight.shape)}"
                )
            weight = module.weight
            delta = (scale * alpha / a.shape[0]) * (b @ a)
            weight.copy_((weight.float() + delta.to(weight.device)).to(weight.dtype))
    return merged
