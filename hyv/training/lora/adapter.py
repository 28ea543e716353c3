"""LoRA on the DiT's Linear layers while it trains, applied from outside the model, and the native
adapter file it is saved as.

A LoRA adapter adds ``scale * (alpha / rank) * B @ A`` to the weight W (out, in) of each target
Linear, with A (rank, in) and B (out, rank). Targets are the DiT's own module paths
("double_blocks.0.img_attn_qkv"), chosen by glob patterns (`fnmatch`) over the Linear modules.

* Training (`LoRAAdapter` + `adapted_forward`): the DiT stays untouched and frozen; each forward
  runs it (`torch.func.functional_call`) with W + (alpha / rank) * B @ A in place of each target
  weight, so only A and B receive gradients. B starts at zero, so an untrained adapter is exactly
  the base model.
* The native file (`save_adapter`): safetensors with, per target, ``<path>.lora_A.weight``
  (rank, in), ``<path>.lora_B.weight`` (out, rank) and ``<path>.alpha`` (a scalar tensor), plus
  string metadata (`ADAPTER_FORMAT`, base model, rank, alpha, targets, the trigger caption
  template, steps). It is read, checked and merged at a scale by the engine, as served adapters
  are: hyv.engine.lora_formats.read_lora_file and hyv.engine.lora.applied_loras.
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
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
