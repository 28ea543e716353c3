"""Where LoRA adapters live, what they are called, and what can be checked of a file without torch
(the API lists the folder and checks a named file's header at create).

A folder of `<name>.safetensors` files; by default `loras/` inside the model's bundle folder.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Literal

LORA_SUFFIX = ".safetensors"
LORA_DIR_NAME = "loras"
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on the JSON header
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})

Factor = Literal["down", "up", "alpha"]
# A LoRA key's ending -> which factor it holds (every format: hyv.engine.lora_formats).
FACTOR_SUFFIXES: tuple[tuple[str, Factor], ...] = (
    (".lora_A.weight", "down"),
    (".lora_down.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora_up.weight", "up"),
    (".alpha", "alpha"),
)


def split_lora_key(key: str) -> tuple[str, Factor] | None:
    """`<module>.lora_A.weight` -> (`<module>`, "down"); None for a key of no LoRA factor."""
    for suffix, factor in FACTOR_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], factor
    return None


def default_lora_dir(weights: Path) -> Path:
    """The adapters of the bundle at `weights`."""
    return weights / LORA_DIR_NAME


def lora_names(folder: Path | None) -> list[str]:
    """The adapter names in `folder` (file stems of its *.safetensors), sorted; none if it is absent."""
    if folder is None or not folder.is_dir():
        return []
    return sorted(p.name.removesuffix(LORA_SUFFIX) for p in folder.glob(f"*{LORA_SUFFIX}") if p.is_file())


def parse_lora_option(value: str) -> tuple[str, float]:
    """`NAME_OR_PATH[:SCALE]` (the CLI's --lora) -> (name or path, scale; 1.0 when not given)."""
    spec, sep, tail = value.rpartition(":")
    if sep and spec:
        try:
            return spec, float(tail)
        except ValueError:
            pass
    return value, 1.0


def check_lora_header(path: Path) -> None:
    """What a safetensors adapter shows without its tensors being read: a readable header that fits
    the file (not truncated), LoRA keys only, each down with its up, float matrices whose ranks
    agree. ValueError names the problem; the worker checks the rest (layer names and shapes
    against the model, NaN/inf) before the job runs."""
    try:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if not 2 <= length <= MAX_HEADER_BYTES:
                raise ValueError(f"header length {length}")
            header = json.loads(handle.read(length))
    except (OSError, struct.error, ValueError) as exc:
        raise ValueError(f"{path.name} is not a readable safetensors file: {exc}") from None
    header.pop("__metadata__", None)
    size = path.stat().st_size - 8 - length
    shapes: dict[str, dict[str, list[int]]] = {}
    problems: list[str] = []
    for key, info in header.items():
        split = split_lora_key(key)
        offsets = info.get("data_offsets", [0, 0]) if isinstance(info, dict) else [0, 0]
        if split is None or not isinstance(info, dict):
            problems.append(f"{key} is not a LoRA factor (lora_A/lora_B/lora_down/lora_up weight or alpha)")
            continue
        if offsets[1] > size:
            problems.append(f"{key} lies past the end of the file (truncated?)")
        elif split[1] != "alpha" and info.get("dtype") not in FLOAT_DTYPES:
            problems.append(f"{key} has dtype {info.get('dtype')}, not a float")
        shapes.setdefault(split[0], {})[split[1]] = list(info.get("shape", []))
    for module, factors in shapes.items():
        down, up = factors.get("down"), factors.get("up")
        if down is None or up is None:
            problems.append(f"{module}: {'down (lora_A)' if down is None else 'up (lora_B)'} is missing")
        elif len(down) != 2 or len(up) != 2:
            problems.append(f"{module}: down {down} and up {up} must be matrices")
        elif down[0] != up[1]:
            problems.append(f"{module}: rank mismatch, down {down} has rank {down[0]}, up {up} has {up[1]}")
    if not header:
        problems.append("it holds no tensors")
    if problems:
        shown = "; ".join(problems[:8]) + (f" (and {len(problems) - 8} more)" if len(problems) > 8 else "")
        raise ValueError(f"LoRA {path.name.removesuffix(LORA_SUFFIX)!r}: {shown}")
