"""Where LoRA adapters live and what they are called (no torch: the API lists them too).

A folder of `<name>.safetensors` files; by default `loras/` inside the model's bundle folder.
"""

from __future__ import annotations

from pathlib import Path

LORA_SUFFIX = ".safetensors"
LORA_DIR_NAME = "loras"


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
