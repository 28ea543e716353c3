"""LoRA adapters per request, applied to a loaded DiT from outside and taken off after the job.

`LoraLibrary` names the adapters of a folder (`<name>.safetensors`), reads and checks them against
the DiT (hyv.engine.lora_formats) and keeps the last ones used in an LRU cache. `applied_loras`
merges a job's adapters into the weights they touch for the length of a `with` block:

    W' = W + sum_i scale_i * delta_i     (computed in float32, rounded once to W's dtype)

Each adapted layer's Parameter is swapped for a new one holding W' and the original Parameter
object is put back on exit, so the base weights are never written: a job without adapters after
one with adapters runs on the very same tensors, bit for bit, and an adapter refused by the checks
(which all run before the first swap) leaves nothing behind. The cost is one extra copy of the
adapted layers' weights while the job runs. Scale 0 is the same as leaving the adapter out.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from hyv.engine.lora_folder import LORA_SUFFIX, lora_names
from hyv.engine.lora_formats import LoraAdapter, LoraError, LoraTargets, find_dit, read_lora_file
from hyv.engine.request import LoraChoice

logger = logging.getLogger(__name__)

DEFAULT_CACHE_SIZE = 8


class LoraLibrary:
    """The adapters one pipeline can apply: a folder's files plus explicitly added ones (the CLI's
    paths), read on first use and kept in an LRU cache of `cache_size` adapters."""

    def __init__(self, folder: Path | None = None, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        if cache_size < 0:
            raise ValueError(f"LoRA cache_size must be >= 0, got {cache_size}")
        self.folder = folder
        self.cache_size = cache_size
        self.files: dict[str, Path] = {}
        self._cache: OrderedDict[tuple[str, int, int], LoraAdapter] = OrderedDict()
        self._lock = threading.Lock()
        self._targets: tuple[int, LoraTargets] | None = None  # (id of the DiT, its targets)

    def add_file(self, path: str | Path, name: str | None = None) -> str:
        """Make a file outside the folder available under `name` (default: its stem)."""
        path = Path(path)
        if not path.is_file():
            raise LoraError(f"LoRA file not found: {path}")
        name = name or path.name.removesuffix(LORA_SUFFIX)
        self.files[name] = path
        return name

    def names(self) -> list[str]:
        return sorted({*lora_names(self.folder), *self.files})

    def path(self, name: str) -> Path:
        if name in self.files:
            return self.files[name]
        if self.folder is not None:
            path = self.folder / f"{name}{LORA_SUFFIX}"
            if "/" not in name and path.is_file():
                return path
        available = self.names()
        raise LoraError(
            f"no LoRA named {name!r}; available: {available if available else 'none'}"
            + (f" (folder {self.folder})" if self.folder is not None else "")
        )

    @property
    def cached(self) -> list[str]:
        """Names in the cache, least recently used first."""
        return [key[0] for key in self._cache]

    def targets(self, dit: nn.Module) -> LoraTargets:
        if self._targets is None or self._targets[0] != id(find_dit(dit)):
            self._targets = (id(find_dit(dit)), LoraTargets.of(dit))
        return self._targets[1]

    def load(self, name: str, dit: nn.Module) -> LoraAdapter:
        """The adapter `name`, read and checked against `dit` (LoraError says what is wrong). A file
        replaced on disk (other size or modification time) is read again."""
        path = self.path(name)
        stat = path.stat()
        key = (name, stat.st_mtime_ns, stat.st_size)
        with self._lock:
            adapter = self._cache.get(key)
            if adapter is not None:
                self._cache.move_to_end(key)
                return adapter
        adapter = read_lora_file(path, self.targets(dit), name)
        logger.info(
            "LoRA loaded",
            extra={
                "lora": name,
                "format": adapter.format,
                "layers": len(adapter.parts),
                "params": adapter.num_parameters,
            },
        )
        with self._lock:
            for stale in [k for k in self._cache if k[0] == name]:
                del self._cache[stale]
            if self.cache_size:
                self._cache[key] = adapter
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return adapter

    def resolve(self, choices: Sequence[LoraChoice], dit: nn.Module) -> list[tuple[LoraAdapter, float]]:
        """Each non-zero choice's adapter with its scale, all read and checked (before any job work)."""
        return [(self.load(choice.name, dit), choice.scale) for choice in choices if choice.scale != 0.0]


def merged_weights(dit: nn.Module, adapters: Sequence[tuple[LoraAdapter, float]]) -> dict[str, torch.Tensor]:
    """module name -> W + sum of scale * delta for every layer an adapter touches (new tensors)."""
    base = find_dit(dit)
    modules = sorted({m for adapter, _ in adapters for m in adapter.parts})
    merged: dict[str, torch.Tensor] = {}
    for name in modules:
        layer = base.get_submodule(name)
        if not isinstance(layer, nn.Linear):
            raise LoraError(f"{name} is a {type(layer).__name__}, not a Linear a LoRA can merge into")
        weight = layer.weight.detach()
        total = weight.to(torch.float32)  # a new tensor unless W is float32: copied below then
        if total.data_ptr() == weight.data_ptr():
            total = total.clone()
        for adapter, scale in adapters:
            if name in adapter.parts:
                total += scale * adapter.delta(name, tuple(weight.shape), weight.device)  # type: ignore[arg-type]
        merged[name] = total.to(weight.dtype)
    return merged


@contextlib.contextmanager
def applied_loras(dit: nn.Module, adapters: Sequence[tuple[LoraAdapter, float]]) -> Iterator[None]:
    """Run the block with `adapters` merged into `dit`'s weights; the original Parameters are back
    on exit, also when the block raises."""
    active = [(adapter, scale) for adapter, scale in adapters if scale != 0.0]
    if not active:
        yield
        return
    base = find_dit(dit)
    merged = merged_weights(base, active)  # everything computed before the first swap
    originals: dict[str, torch.Tensor] = {}  # the Parameter objects themselves
    try:
        for name, weight in merged.items():
            layer = base.get_submodule(name)
            assert isinstance(layer, nn.Linear)  # merged_weights checked it
            originals[name] = layer.weight
            layer.weight = nn.Parameter(weight, requires_grad=False)
        yield
    finally:
        for name, original in originals.items():
            base.get_submodule(name).weight = original
