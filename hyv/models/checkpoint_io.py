"""Reading and writing weight files, shared by the DiT, VAE and text-encoder loaders.

Large checkpoints (the 13B DiT is ~26 GB in bf16) must never sit in RAM twice: safetensors are
memory-mapped, `.pt` files are loaded with `mmap=True`, and models are built on the meta device
and filled with `load_state_dict(..., assign=True)`.

The project's own format is a directory holding `config.json` (with a "format" tag naming the
model kind) and `model.safetensors`.
"""

from __future__ import annotations

import json
import logging
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

OWN_CONFIG_NAME = "config.json"
OWN_WEIGHTS_NAME = "model.safetensors"
FORMAT_KEY = "_hyv_format"


class CheckpointError(ValueError):
    """A weight file that cannot be used: missing, truncated, or of another architecture."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a `.safetensors` or `.pt`/`.pth`/`.bin` file without copying it into RAM.

    `.pt` files may hold the tensors at the top level or under `module`, `ema`, `model` or
    `state_dict` (as the official HunyuanVideo checkpoints do).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise CheckpointError(
                f"cannot read safetensors file {path} (truncated or corrupt?): {exc}"
            ) from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or corrupt?): {exc}") from exc
    return unwrap_state_dict(obj, source=str(path))


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the tensor mapping inside a loaded checkpoint object."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source} holds a {type(obj).__name__}, not a state dict")
    for wrapper in ("module", "ema", "model", "state_dict"):
        inner = obj.get(wrapper)
        if isinstance(inner, Mapping) and inner:
            obj = inner
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{source} contains no tensors (keys: {list(obj)[:8]})")
    return tensors


def read_safetensors_dir(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a directory of (possibly sharded) safetensors files, as diffusers writes."""
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no .safetensors files in {directory}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(read_state_dict(file))
    return state


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read JSON config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"config {path} is not a JSON object")
    return data


def save_own_format(
    directory: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    format_name: str,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write `config.json` + `model.safetensors`; returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {FORMAT_KEY: format_name, **config}
    (directory / OWN_CONFIG_NAME).write_text(json.dumps(payload, indent=2, sort_keys=True))
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    save_file(tensors, str(directory / OWN_WEIGHTS_NAME), metadata=dict(metadata or {}))
    return directory


def is_own_format(directory: Path, format_name: str) -> bool:
    config_path = directory / OWN_CONFIG_NAME
    if not (directory.is_dir() and config_path.is_file() and (directory / OWN_WEIGHTS_NAME).is_file()):
        return False
    return read_json(config_path).get(FORMAT_KEY) == format_name


def load_into(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """`load_state_dict(strict=True, assign=True)` with an error that names the mismatch.

    `assign=True` lets a model built on the meta device take the (memory-mapped) tensors as its
    parameters, so the weights exist once.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{what}: checkpoint does not match the architecture; "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})"
        )
    for name, tensor in state_dict.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(
                f"{what}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                f"the config expects {tuple(expected[name].shape)}"
            )
    model.load_state_dict(dict(state_dict), strict=True, assign=True)


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "fp32": torch.float32,
        "float32": torch.float32,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
    }
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(names)}")
    return names[dtype]
