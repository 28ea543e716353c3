"""Ahead-of-time compilation of every Triton kernel for sm_80 and sm_90, without a GPU.

The argument types come from the launchers themselves: `record_launches()` installs a launch
recorder (hyv.kernels._common), under which the public ops run on meta tensors and every
`kernel[grid](*args, **kwargs)` is recorded (tensor dtypes, shapes, strides; ints; constexprs)
instead of launched. `launch_cases(dtype)` drives each op forward and backward on tensors shaped
as in the 13B DiT (head dim 128, hidden 3072, q/k as views of a fused qkv projection, the 720p
token count), so the registry holds what the model's launches pass, per dtype.

`compile_launch` then does what `JITFunction.run` does on a GPU, minus the driver: Triton's own
specialization of the arguments (int widths, constexpr 1, 16-byte divisibility), then
`triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`, which runs the wheel's ptxas.
Registers come from the cubin (the wheel's cuobjdump), shared memory from the kernel's metadata.

`python -m hyv.kernels.aot` prints the table (`--json` for machine-readable rows).
Relies on triton 3.x internals (`create_function_from_signature`, `JITFunction._pack_args`),
the same calls `JITFunction.run` makes; tests/kernels/test_aot_compile.py pins them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib
import inspect
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar, cast

import torch

from hyv.kernels import _common

T = TypeVar("T")

ARCHS = (80, 90)
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
INT32_MAX = 2**31 - 1

# ---------------------------------------------------------------------------------------------
# Recording launches


@dataclass(frozen=True)
class TensorArg:
    """A tensor argument as the kernel sees it: dtype, and the layout its index arithmetic walks.

    Holds no tensor (recording must not keep activations alive). `data_ptr` is what Triton reads
    for the 16-byte alignment specialization: the storage offset in bytes, allocations themselves
    being aligned (CUDA's allocator: 512 bytes)."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int  # storage offset, elements

    @classmethod
    def of(cls, t: torch.Tensor) -> TensorArg:
        return cls(t.dtype, tuple(t.shape), tuple(t.stride()), int(t.storage_offset()))

    def data_ptr(self) -> int:
        return self.offset * self.dtype.itemsize

    @property
    def max_offset(self) -> int:
        """Largest element offset from the base pointer that indexing this tensor reaches."""
        if any(s == 0 for s in self.shape):
            return 0
        return self.offset + sum((s - 1) * st for s, st in zip(self.shape, self.stride, strict=True))


@dataclass(frozen=True)
class Launch:
    """One recorded `kernel[grid](*args, **kwargs)`."""

    kernel: str  # "module:function" of the kernel's Python source
    grid: tuple[int, ...]
    args: tuple[Any, ...]  # TensorArg, int, float or bool, in the kernel's argument order
    kwargs: tuple[tuple[str, Any], ...]  # the constexprs the launcher passes by name

    @property
    def name(self) -> str:
        module, fn = self.kernel.split(":")
        return f"{module.rsplit('.', 1)[-1].removeprefix('_').removesuffix('_kernels')}.{fn.lstrip('_')}"

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the first tensor argument (the activation the launch works on)."""
        return next(a.dtype for a in self.args if isinstance(a, TensorArg))


def _kernel_id(kernel: Any) -> str:
    fn = kernel.fn
    return f"{fn.__module__}:{fn.__name__}"


class _RecordingKernel:
    def __init__(self, kernel_id: str, recorder: LaunchLog) -> None:
        self._id = kernel_id
        self._recorder = recorder

    def __getitem__(self, grid: Iterable[int]) -> Callable[..., None]:
        def launch(*args: Any, **kwargs: Any) -> None:
            self._recorder.launches.append(
                Launch(self._id, tuple(int(g) for g in grid), tuple(_describe(a) for a in args),
                       tuple(sorted(kwargs.items())))
            )  # fmt: skip

        return launch


class _RecordingModule:
    def __init__(self, module: ModuleType, recorder: LaunchLog) -> None:
        self._module = module
        self._recorder = recorder

    def __getattr__(self, name: str) -> Any:
        return self._recorder.wrap(getattr(self._module, name))


def _describe(arg: Any) -> Any:
    return TensorArg.of(arg) if isinstance(arg, torch.Tensor) else arg


class LaunchLog:
    """The `LaunchRecorder` of hyv.kernels._common: kernels (a kernel, a tuple of them, or their
    module, whatever the launcher's lazy builder returns) come back as recording stand-ins."""

    def __init__(self) -> None:
        self.launches: list[Launch] = []

    def wrap(self, kernels: T) -> T:
        if isinstance(kernels, tuple):
            return cast(T, tuple(self.wrap(k) for k in kernels))
        if isinstance(kernels, ModuleType):
            return cast(T, _RecordingModule(kernels, self))
        if callable(getattr(kernels, "fn", None)) and hasattr(kernels, "__getitem__"):
            return cast(T, _RecordingKernel(_kernel_id(kernels), self))
        return kernels


@contextlib.contextmanager
def record_launches() -> Iterator[LaunchLog]:
    """Inside the block, the fused ops accept meta tensors and record their launches."""
    if not _common.triton_available():
        raise RuntimeError("recording kernel launches needs triton (the kernels' own module imports it)")
    log = LaunchLog()
    previous = _common.set_launch_recorder(log)
    try:
        yield log
    finally:
        _common.set_launch_recorder(previous)


# ---------------------------------------------------------------------------------------------
# What the model launches


# The 13B DiT's shapes (hyv/models/dit_config.py, preset hunyuan-video-13b) at 720x1280x129:
# 33x45x80 video tokens after 1x2x2 patches, plus 256 text tokens.
HIDDEN, HEADS, HEAD_DIM = 3072, 24, 128
TOKENS_720P = 33 * 45 * 80 + 256


def launch_cases(dtype: torch.dtype, tokens: int = TOKENS_720P, batch: int = 1) -> list[Launch]:
    """Every op of hyv.kernels forward and backward on meta tensors laid out as the DiT's blocks
    lay them out; returns the launches in order. Weights (norm scales) share the activations'
    dtype, as in a model cast with `.to(dtype)`."""
    from hyv import kernels

    meta = torch.device("meta")

    def leaf(*shape: int) -> torch.Tensor:
        return torch.empty(*shape, dtype=dtype, device=meta, requires_grad=True)

    def backward(*outs: torch.Tensor) -> None:
        torch.autograd.backward(list(outs), [torch.empty_like(o) for o in outs])

    before = _common.fused_enabled()
    _common.set_fused_enabled(True)
    try:
        with record_launches() as log, torch.enable_grad():
            # q, k as the blocks take them: views of one (B, L, 3*H*Dh) projection (fused qkv)
            qkv = leaf(batch, tokens, 3 * HIDDEN).unflatten(-1, (3, HEADS, HEAD_DIM))  # (B, L, 3, H, Dh)
            q, k = qkv[:, :, 0], qkv[:, :, 1]  # (B, L, H, Dh), strided
            wq, wk = leaf(HEAD_DIM), leaf(HEAD_DIM)
            backward(*kernels.rms_norm_qk(q, k, wq, wk, 1e-6))
            backward(kernels.rms_norm(q, wq, 1e-6))
            cos, sin = (torch.empty(tokens - 256, HEAD_DIM, device=meta) for _ in range(2))  # fp32 tables
            backward(*kernels.apply_rotary_emb_qk(q, k, cos, sin))
            backward(kernels.apply_rotary_emb(q[:, : tokens - 256], cos, sin))
            x = leaf(batch, tokens, HIDDEN)
            mod = leaf(batch, 3 * HIDDEN)  # (B, 3D) modulation output, chunked like Modulation
            shift, scale, gate = mod.chunk(3, dim=-1)
            backward(kernels.layernorm_modulate(x, shift, scale, 1e-6))
            backward(kernels.gated_residual(x, gate, leaf(batch, tokens, HIDDEN)))
    finally:
        _common.set_fused_enabled(before)
    return log.launches


# ---------------------------------------------------------------------------------------------
# Compiling


@functools.cache
def jit_module(module_name: str) -> ModuleType:
    """The kernels' module, checked to hold compilable `triton.jit` functions.

    A process that imported triton with TRITON_INTERPRET=1 cannot compile: triton's own library
    (tl.sum, ...) was decorated for the interpreter then. Compile in another process
    (`python -m hyv.kernels.aot`, which is what the tests do)."""
    import triton.language as tl
    from triton.runtime.jit import JITFunction

    module = importlib.import_module(module_name)
    if not isinstance(tl.standard.sum, JITFunction) or not any(
        isinstance(v, JITFunction) for v in vars(module).values()
    ):
        raise RuntimeError(
            f"{module_name} was imported under TRITON_INTERPRET=1: its kernels (and triton's library) "
            "are interpreter functions and cannot be compiled in this process; run "
            "`python -m hyv.kernels.aot` without TRITON_INTERPRET"
        )
    return module


def kernel_arg_names(kernel_id: str) -> list[str]:
    """The kernel's argument names (JIT or interpreter function alike)."""
    module, name = kernel_id.split(":")
    return list(inspect.signature(getattr(importlib.import_module(module), name).fn).parameters)


def jit_kernel(kernel_id: str) -> Any:
    module, name = kernel_id.split(":")
    return getattr(jit_module(module), name)


@dataclass(frozen=True)
class Specialization:
    """What the JIT would compile for a launch: argument types, constexpr values, attributes."""

    kernel: str
    signature: dict[str, str]
    constexprs: dict[str, Any]  # by argument name
    attrs: dict[tuple[int, ...], Any]
    options: dict[str, Any]

    def key(self) -> tuple[str, str, str]:
        return (self.kernel, json.dumps(self.signature), json.dumps(self.constexprs, sort_keys=True))


def specialize(launch: Launch, arch: int) -> Specialization:
    """Triton's own specialization of the launch's arguments (as `JITFunction.run` does)."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = jit_kernel(launch.kernel)
    backend = make_backend(GPUTarget("cuda", arch, 32))
    kwargs: dict[str, Any] = dict(launch.kwargs)
    kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, spec, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, options)
    names = fn.arg_names
    return Specialization(
        launch.kernel,
        dict(signature),
        {names[path[0]]: value for path, value in constexprs.items()},
        dict(attrs),
        dict(options.__dict__),
    )


@dataclass(frozen=True)
class CompiledInfo:
    """One kernel variant compiled for one architecture."""

    kernel: str  # short name, e.g. rms_norm.fwd_kernel
    source: str  # "module:function" of the kernel
    dtype: str  # fp32 / bf16 / fp16
    arch: int  # 80 or 90
    constexprs: dict[str, Any]
    signature: dict[str, str]
    num_warps: int
    registers: int | None  # per thread, from the cubin (None: no cuobjdump in this triton)
    spill_bytes: int | None  # local memory per thread (register spills)
    shared_bytes: int  # dynamic shared memory the launch requests (kernel metadata)
    ptx_target: str  # the PTX's .target line, e.g. sm_90a
    ptx_bytes: int
    cubin_bytes: int


_RESOURCE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def cubin_resources(cubin: bytes) -> tuple[int, int] | None:
    """(registers per thread, local bytes per thread) of the cubin's one kernel, read with the
    cuobjdump that ships with triton's NVIDIA backend; None if it is missing."""
    from triton import knobs

    try:
        tool = knobs.nvidia.cuobjdump.path
    except Exception:  # knob missing, or no binary for this platform
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run(
            [tool, "--dump-resource-usage", f.name], capture_output=True, text=True, check=True
        )
    m = _RESOURCE.search(out.stdout)
    if m is None:
        raise RuntimeError(f"no resource usage in cuobjdump's output: {out.stdout!r}")
    return int(m.group(1)), int(m.group(4))


def compile_launch(launch: Launch, arch: int) -> tuple[Any, CompiledInfo]:
    """Compile the launch's kernel for sm_<arch> with Triton's compiler; (CompiledKernel, info)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch}")
    spec = specialize(launch, arch)
    fn = jit_kernel(launch.kernel)
    names = fn.arg_names
    src = ASTSource(
        fn, spec.signature, {(names.index(k),): v for k, v in spec.constexprs.items()}, spec.attrs
    )
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=spec.options)
    resources = cubin_resources(compiled.asm["cubin"])
    dtype = next(k for k, v in DTYPES.items() if v == launch.dtype)
    target = re.search(r"^\.target\s+(\w+)", compiled.asm["ptx"], re.MULTILINE)
    info = CompiledInfo(
        kernel=launch.name,
        source=launch.kernel,
        dtype=dtype,
        arch=arch,
        constexprs={k: v for k, v in spec.constexprs.items() if k in dict(launch.kwargs)},
        signature=spec.signature,
        num_warps=compiled.metadata.num_warps,
        registers=None if resources is None else resources[0],
        spill_bytes=None if resources is None else resources[1],
        shared_bytes=compiled.metadata.shared,
        ptx_target=target.group(1) if target else "",
        ptx_bytes=len(compiled.asm["ptx"]),
        cubin_bytes=len(compiled.asm["cubin"]),
    )
    return compiled, info


def registry(dtypes: Iterable[str] = tuple(DTYPES)) -> list[Launch]:
    """One launch per distinct kernel variant (kernel, argument types, constexprs) per dtype."""
    seen: set[tuple[str, str, str]] = set()
    out = []
    for name in dtypes:
        for launch in launch_cases(DTYPES[name]):
            key = specialize(launch, ARCHS[0]).key()
            if key not in seen:
                seen.add(key)
                out.append(launch)
    return out


def compile_all(archs: Iterable[int] = ARCHS, dtypes: Iterable[str] = tuple(DTYPES)) -> list[CompiledInfo]:
    """Every kernel variant of the registry compiled for every arch."""
    launches = registry(dtypes)
    return [compile_launch(launch, arch)[1] for arch in archs for launch in launches]


# ---------------------------------------------------------------------------------------------
# int32 overflow


@dataclass(frozen=True)
class OffsetExtent:
    """The largest element offset a kernel's index arithmetic reaches in one pointer argument,
    over recorded launches (from the tensor's shape, strides and storage offset as passed)."""

    kernel: str
    arg: str
    max_offset: int
    launches: int  # how many launches passed this argument

    @property
    def exceeds_int32(self) -> bool:
        return self.max_offset > INT32_MAX


def offset_extents(launches: Iterable[Launch]) -> list[OffsetExtent]:
    """Per (kernel, pointer argument): the largest offset over the launches, sorted by kernel."""
    best: dict[tuple[str, str], tuple[int, int]] = {}
    for launch in launches:
        for name, arg in zip(kernel_arg_names(launch.kernel), launch.args, strict=False):
            if isinstance(arg, TensorArg):
                key = (launch.name, name)
                top, n = best.get(key, (0, 0))
                best[key] = (max(top, arg.max_offset), n + 1)
    return [OffsetExtent(k, a, top, n) for (k, a), (top, n) in sorted(best.items())]


def format_table(infos: Iterable[CompiledInfo]) -> str:
    """Markdown table: one row per kernel variant and dtype, registers / shared memory per arch."""
    rows: dict[tuple[str, str, str], dict[int, CompiledInfo]] = {}
    for info in infos:
        consts = ", ".join(f"{k}={v}" for k, v in sorted(info.constexprs.items()))
        rows.setdefault((info.kernel, consts, info.dtype), {})[info.arch] = info
    archs = sorted({a for by_arch in rows.values() for a in by_arch})
    head = ["kernel", "constexprs", "dtype", "warps"]
    for a in archs:
        head += [f"sm_{a} regs", f"sm_{a} spill B", f"sm_{a} shared B"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * 3 + " ---: |" * (len(head) - 3)]
    for (kernel, consts, dtype), by_arch in rows.items():
        cells = [kernel, consts, dtype, str(next(iter(by_arch.values())).num_warps)]
        for a in archs:
            i = by_arch.get(a)
            cells += ["-"] * 3 if i is None else [str(i.registers), str(i.spill_bytes), str(i.shared_bytes)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hyv.kernels.aot",
        description="Compile every Triton kernel for sm_80 and sm_90 (no GPU needed) and print "
        "registers and shared memory per kernel variant.",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per compiled variant")
    parser.add_argument("--arch", type=int, action="append", choices=ARCHS, help="default: all")
    parser.add_argument("--dtype", action="append", choices=list(DTYPES), help="default: all")
    args = parser.parse_args(argv)
    infos = compile_all(args.arch or ARCHS, args.dtype or tuple(DTYPES))
    if args.json:
        print(json.dumps([dataclasses.asdict(i) for i in infos], indent=1))
    else:
        print(format_table(infos))
    return 0


if __name__ == "__main__":
    sys.exit(main())
