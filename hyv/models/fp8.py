"""FP8 (float8 e4m3) weights for the DiT's linear layers.

Each quantized layer keeps its weight as float8_e4m3fn (out, in) with one fp32 scale per output
channel, so `weight_fp8[o] * weight_scale[o]` is the original row to within e4m3's 3 mantissa
bits (relative error <= 2^-4, half a step). The bias stays in the compute dtype. Weight memory of
the quantized layers drops from 2 bytes (bf16) to 1 byte per element plus 4 bytes per output row.

`FP8Linear.forward` has two paths that compute the same product:

* `scaled_mm_linear`: the activation is quantized to e4m3 per row (dynamic, one fp32 scale per
  token), and `torch._scaled_mm` multiplies the two fp8 operands with the row/channel scales and
  fp32 accumulation. Taken on CUDA devices with FP8 tensor cores (compute capability >= 8.9) for
  bf16 activations and shapes the kernels take; torch also runs `_scaled_mm` on the CPU, which is
  how the tests check this path against the other.
* `dequantized_linear`: the weight is dequantized to the activation's dtype for this one call and
  multiplied with `F.linear`. Everywhere else (CPU, older GPUs, fp32/fp16 activations). The
  activation is not quantized, so this path is the more accurate of the two.

Which layers: every `nn.Linear` inside `double_blocks` / `single_blocks`, as Tencent's own FP8
release (hyvideo/modules/fp8_optimization.py) does; the embedders, token refiner and final layer
stay in high precision. Tencent's release stores one scale per tensor in a separate
`*_fp8_map.pt` file (module name -> scale); `tencent_fp8_state_dict` turns it into this format.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hyv.models.checkpoint_io import CheckpointError

logger = logging.getLogger(__name__)

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
SCALE_SUFFIX = "weight_scale"
QUANTIZED_PREFIXES = ("double_blocks.", "single_blocks.")
# What the two paths accept: cuBLASLt's FP8 GEMM wants both matrix dimensions of the weight to be
# multiples of 16; its row-wise scaling (one scale per token and per output channel) wants bf16 out.
_SCALED_MM_ALIGNMENT = 16
_SCALED_MM_DTYPES = (torch.bfloat16,)


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) weight -> (float8_e4m3fn (out, in), fp32 scale (out,)) with
    `dequantize_weight(q, scale) ~= weight`. The largest |value| of each row maps to 448, e4m3's
    largest finite value; an all-zero row gets scale 1 (and zeros)."""
    if weight.ndim != 2:
        raise ValueError(f"quantize_weight expects a 2-D (out, in) weight, got shape {tuple(weight.shape)}")
    w = weight.detach().float()
    amax = w.abs().amax(dim=1)  # (out,)
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))  # (out,)
    quantized = (w / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)  # round to nearest even
    return quantized, scale


def dequantize_weight(
    weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """fp8 (out, in) and per-channel scale (out,) -> the weight in `dtype`; the product is formed
    in fp32 and rounded once."""
    return (weight.float() * scale.float()[:, None]).to(dtype)  # (out, in)


def quantize_activation_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) activation -> (float8_e4m3fn (M, K), fp32 scale (M, 1)), one scale per row (token)."""
    x32 = x.float()
    amax = x32.abs().amax(dim=1, keepdim=True)  # (M, 1)
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    return (x32 / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


def scaled_mm_linear(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """x (..., in) @ (weight * scale)^T + bias with both operands in fp8: the activation quantized
    per row, one `torch._scaled_mm` (fp32 accumulation, row and channel scales applied to the
    product). The output has x's dtype."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])  # (M, in)
    xq, x_scale = quantize_activation_rows(x2)  # (M, in) fp8, (M, 1)
    out = torch._scaled_mm(
        xq.contiguous(),  # a must be row-major
        weight.t(),  # (in, out): the transpose of a row-major weight is the column-major b it wants
        scale_a=x_scale,
        scale_b=scale.float().reshape(1, -1),  # (1, out)
        bias=None if bias is None else bias.to(x.dtype),
        out_dtype=x.dtype,
    )  # (M, out)
    return out.reshape(*shape[:-1], weight.shape[0])


def dequantized_linear(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """x (..., in) @ (weight * scale)^T + bias in x's dtype, the weight dequantized for this call."""
    return F.linear(x, dequantize_weight(weight, scale, x.dtype), None if bias is None else bias.to(x.dtype))


_CAPABILITY: dict[int, tuple[int, int]] = {}


def fp8_supported(device: torch.device | str) -> bool:
    """Whether `device` has FP8 tensor cores (CUDA compute capability >= 8.9: Ada, Hopper and later)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _CAPABILITY:
        _CAPABILITY[index] = torch.cuda.get_device_capability(index)
    return _CAPABILITY[index] >= (8, 9)


class FP8Linear(nn.Module):
    """A linear layer whose weight is float8_e4m3fn with per-output-channel fp32 scales.

    State dict: `weight` (out, in) fp8, `weight_scale` (out,) fp32, `bias` (out,). `use_scaled_mm`:
    None picks the path per call (see the module docstring; a layer `_scaled_mm` refuses with a
    RuntimeError is dequantized from then on, with a warning); True / False force `torch._scaled_mm`
    / the dequantized weight (wherever `_scaled_mm` runs, the CPU included).
    """

    weight_scale: torch.Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.use_scaled_mm: bool | None = None
        weight = torch.zeros(out_features, in_features, device=device, dtype=FP8_DTYPE)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.register_buffer("weight_scale", torch.ones(out_features, device=device, dtype=torch.float32))
        if bias:
            self.bias: nn.Parameter | None = nn.Parameter(
                torch.zeros(out_features, device=device, dtype=dtype), requires_grad=False
            )
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> FP8Linear:
        """The quantized copy of `linear` (its bias keeps its dtype and device)."""
        layer = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        weight, scale = quantize_weight(linear.weight)
        layer.weight = nn.Parameter(weight, requires_grad=False)
        layer.weight_scale = scale
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return layer

    def _scaled_mm_fits(self, x: torch.Tensor, out_features: int) -> bool:
        """Whether the automatic choice takes torch._scaled_mm for `x` and `out_features` rows."""
        return (
            x.dtype in _SCALED_MM_DTYPES
            and self.in_features % _SCALED_MM_ALIGNMENT == 0
            and out_features % _SCALED_MM_ALIGNMENT == 0
            and fp8_supported(x.device)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._linear(x, self.weight, self.weight_scale, self.bias)

    def forward_rows(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """The output channels [start, stop) only: x (..., in) -> (..., stop - start)."""
        bias = None if self.bias is None else self.bias[start:stop]
        return self._linear(x, self.weight[start:stop], self.weight_scale[start:stop], bias)

    def _linear(
        self, x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if self.use_scaled_mm is not None:  # forced either way
            linear = scaled_mm_linear if self.use_scaled_mm else dequantized_linear
            return linear(x, weight, scale, bias)
        if not self._scaled_mm_fits(x, weight.shape[0]):
            return dequantized_linear(x, weight, scale, bias)
        try:
            return scaled_mm_linear(x, weight, scale, bias)
        except RuntimeError as exc:
            # Per-row FP8 scaling is missing from some torch/GPU pairs (cuBLASLt has refused it
            # on sm_120): this layer dequantizes from now on instead of failing every job.
            logger.warning(
                "torch._scaled_mm refused a %dx%d FP8 layer on %s (%s); dequantizing it instead",
                self.out_features,
                self.in_features,
                x.device,
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
            self.use_scaled_mm = False
            return dequantized_linear(x, weight, scale, bias)

    def _apply(self, fn: Any, recurse: bool = True) -> FP8Linear:
        # Module.to(dtype) casts every floating tensor, float8 included. fp8 values are exact in
        # every wider float type, so casting the weight back is lossless; the scale keeps its fp32.
        scale = self.weight_scale
        super()._apply(fn, recurse)
        if self.weight.dtype != FP8_DTYPE:
            self.weight.data = self.weight.data.to(FP8_DTYPE)
        self.weight_scale = scale.to(self.weight.device)
        return self

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, weight=float8_e4m3fn"
        )


def linear_rows(layer: nn.Module, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """`layer(x)` restricted to output channels [start, stop), for an nn.Linear (row views of its
    weight, no copy) or an FP8Linear."""
    if isinstance(layer, FP8Linear):
        return layer.forward_rows(x, start, stop)
    assert isinstance(layer, nn.Linear)
    bias = None if layer.bias is None else layer.bias[start:stop]
    return F.linear(x, layer.weight[start:stop], bias)


def is_quantized_layer_name(name: str) -> bool:
    """Whether `name` (a module path) is one of the layers FP8 applies to: inside the blocks."""
    return name.startswith(QUANTIZED_PREFIXES)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def quantize_linears_(model: nn.Module, names: Iterable[str]) -> int:
    """Replace the nn.Linear modules called `names` by their FP8Linear copies, in place; returns
    how many. On the meta device this only changes the structure (for loading FP8 weights)."""
    wanted = set(names)
    modules = dict(model.named_modules())
    missing = sorted(wanted - set(modules))
    if missing:
        raise ValueError(f"no modules named {missing[:3]} to quantize in {type(model).__name__}")
    count = 0
    for name in sorted(wanted):
        module = modules[name]
        if isinstance(module, FP8Linear):
            continue
        if not isinstance(module, nn.Linear):
            raise ValueError(f"{name!r} is a {type(module).__name__}, not an nn.Linear")
        _replace(model, name, FP8Linear.from_linear(module))
        count += 1
    return count


def quantize_dit_(model: nn.Module) -> int:
    """Quantize every nn.Linear of the DiT's double- and single-stream blocks to FP8, in place;
    returns the number of layers replaced (0 if they already are)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and is_quantized_layer_name(n)]
    count = quantize_linears_(model, names)
    logger.info("quantized %d DiT block linears to float8_e4m3fn", count)
    return count


def dequantize_(model: nn.Module) -> int:
    """Replace every FP8Linear by an nn.Linear holding its dequantized weight (in its bias's dtype,
    fp32 without a bias), in place; returns how many."""
    names = [n for n, m in model.named_modules() if isinstance(m, FP8Linear)]
    for name in names:
        layer = model.get_submodule(name)
        assert isinstance(layer, FP8Linear)
        dtype = layer.bias.dtype if layer.bias is not None else torch.float32
        linear = nn.Linear(
            layer.in_features,
            layer.out_features,
            bias=layer.bias is not None,
            device=layer.weight.device,
            dtype=dtype,
        )
        with torch.no_grad():
            linear.weight.copy_(dequantize_weight(layer.weight, layer.weight_scale, dtype))
            if layer.bias is not None:
                assert linear.bias is not None
                linear.bias.copy_(layer.bias)
        _replace(model, name, linear)
    return len(names)


def set_scaled_mm_(model: nn.Module, enabled: bool | None) -> int:
    """Set `use_scaled_mm` on every FP8Linear of `model` (None: automatic); returns how many."""
    layers = [m for m in model.modules() if isinstance(m, FP8Linear)]
    for layer in layers:
        layer.use_scaled_mm = enabled
    return len(layers)


def weight_bytes(module: nn.Module) -> int:
    """Bytes held by `module`'s parameters and buffers (each tensor once), on any device, meta
    included: the number behind "weight memory halved"."""
    seen: set[int] = set()
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        total += tensor.numel() * tensor.element_size()
    return total


def fp8_module_names(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """The modules whose `weight` is float8 in `state_dict` (names without `.weight`)."""
    return sorted(
        k[: -len(".weight")] for k, v in state_dict.items() if k.endswith(".weight") and v.dtype == FP8_DTYPE
    )


# --- Tencent's FP8 release -----------------------------------------------------------------------


def tencent_fp8_map_path(weights: str | Path) -> Path:
    """The scales file beside Tencent's FP8 DiT: `mp_rank_00_model_states_fp8.pt` ->
    `mp_rank_00_model_states_fp8_map.pt` (their loader's `.replace('.pt', '_map.pt')`)."""
    weights = Path(weights)
    return weights.with_name(weights.name.replace(".pt", "_map.pt"))


def _per_channel(scale: torch.Tensor, out_features: int, name: str) -> torch.Tensor:
    scale = scale.detach().float().reshape(-1)
    if scale.numel() == 1:  # Tencent's: one scale per tensor (max |w| / 448)
        return scale.expand(out_features).clone()
    if scale.numel() == out_features:
        return scale.clone()
    raise CheckpointError(
        f"FP8 scale of {name!r} has {scale.numel()} values; expected 1 (per tensor) or "
        f"{out_features} (per output channel)"
    )


def tencent_fp8_state_dict(
    state_dict: Mapping[str, torch.Tensor], scales: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Tencent's FP8 DiT state dict + its map (module name -> scale, `weight = fp8 * scale`) ->
    this project's names: every fp8 `<name>.weight` gets `<name>.weight_scale` (out,) fp32."""
    out = dict(state_dict)
    for name in fp8_module_names(state_dict):
        if name not in scales:
            raise CheckpointError(
                f"{source}: {name}.weight is float8 but the FP8 map has no scale for {name!r} "
                f"({len(scales)} entries, e.g. {sorted(scales)[:3]})"
            )
        weight = state_dict[f"{name}.weight"]
        if weight.ndim != 2:
            raise CheckpointError(
                f"{source}: float8 tensor {name}.weight is {weight.ndim}-D, not a linear weight"
            )
        out[f"{name}.{SCALE_SUFFIX}"] = _per_channel(scales[name], weight.shape[0], name)
    return out
