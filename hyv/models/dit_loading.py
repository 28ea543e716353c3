"""Loading and saving HunyuanVideo DiT weights in three formats.

* official: one `.pt` (tensors bare or under `module` / `ema`) or `.safetensors` file with the
  official parameter names - the names our model uses, so it loads as is;
* diffusers: a directory with `config.json` (`_class_name: HunyuanVideoTransformer3DModel`) and
  (possibly sharded) safetensors, converted by `diffusers_to_official_state_dict`;
* own: `save_dit` output - `config.json` tagged "hyv-dit" + `model.safetensors` (official names),
  with string metadata in the safetensors header (`read_dit_metadata`).

Any of them may hold FP8 block linears (hyv.models.fp8): float8 `<layer>.weight` with its
`<layer>.weight_scale` (our format), or Tencent's FP8 release, whose per-tensor scales live in the
`*_map.pt` file beside the weights. Those layers load as `FP8Linear`.

The model is built on the meta device and takes the loaded tensors by assignment, so a 13B
checkpoint is never materialised twice in RAM.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from hyv.models.checkpoint_io import (
    FORMAT_KEY,
    OWN_CONFIG_NAME,
    OWN_WEIGHTS_NAME,
    CheckpointError,
    is_own_format,
    load_into,
    parse_dtype,
    read_json,
    read_safetensors_dir,
    read_state_dict,
    save_own_format,
)
from hyv.models.dit import HunyuanVideoDiT
from hyv.models.dit_config import DIT_PRESETS, DiTConfig
from hyv.models.fp8 import (
    SCALE_SUFFIX,
    fp8_module_names,
    quantize_linears_,
    tencent_fp8_map_path,
    tencent_fp8_state_dict,
)

logger = logging.getLogger(__name__)

FORMAT_NAME = "hyv-dit"
DIFFUSERS_CLASS = "HunyuanVideoTransformer3DModel"
OFFICIAL_ROPE_AXES_128 = (16, 56, 56)

# Official module path suffix -> diffusers suffix, per sub-tree. Split entries map one official
# tensor onto several diffusers tensors concatenated along dim 0.
_REFINER_BLOCK = {
    "norm1": "norm1",
    "norm2": "norm2",
    "self_attn_proj": "attn.to_out.0",
    "mlp.fc1": "ff.net.0.proj",
    "mlp.fc2": "ff.net.2",
    "adaLN_modulation.1": "norm_out.linear",
}
_DOUBLE_BLOCK = {
    "img_mod.linear": "norm1.linear",
    "txt_mod.linear": "norm1_context.linear",
    "img_attn_q_norm": "attn.norm_q",
    "img_attn_k_norm": "attn.norm_k",
    "txt_attn_q_norm": "attn.norm_added_q",
    "txt_attn_k_norm": "attn.norm_added_k",
    "img_attn_proj": "attn.to_out.0",
    "txt_attn_proj": "attn.to_add_out",
    "img_mlp.fc1": "ff.net.0.proj",
    "img_mlp.fc2": "ff.net.2",
    "txt_mlp.fc1": "ff_context.net.0.proj",
    "txt_mlp.fc2": "ff_context.net.2",
}
_SINGLE_BLOCK = {
    "linear2": "proj_out",
    "q_norm": "attn.norm_q",
    "k_norm": "attn.norm_k",
    "modulation.linear": "norm.linear",
}
_TOP = {
    "img_in.proj": "x_embedder.proj",
    "txt_in.input_embedder": "context_embedder.proj_in",
    "txt_in.t_embedder.mlp.0": "context_embedder.time_text_embed.timestep_embedder.linear_1",
    "txt_in.t_embedder.mlp.2": "context_embedder.time_text_embed.timestep_embedder.linear_2",
    "txt_in.c_embedder.linear_1": "context_embedder.time_text_embed.text_embedder.linear_1",
    "txt_in.c_embedder.linear_2": "context_embedder.time_text_embed.text_embedder.linear_2",
    "time_in.mlp.0": "time_text_embed.timestep_embedder.linear_1",
    "time_in.mlp.2": "time_text_embed.timestep_embedder.linear_2",
    "guidance_in.mlp.0": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.mlp.2": "time_text_embed.guidance_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "final_layer.linear": "proj_out",
}


def diffusers_plan(key: str, config: DiTConfig) -> tuple[list[str], list[int] | None, bool]:
    """For one official key: (diffusers keys, dim-0 split sizes or None, swap halves?). LoRA
    adapters in diffusers names map onto our weights through it too (hyv.engine.lora_formats)."""
    module, param = key.rsplit(".", 1)
    d = config.hidden_size
    if module == "final_layer.adaLN_modulation.1":
        return [f"norm_out.linear.{param}"], None, True
    if module in _TOP:
        return [f"{_TOP[module]}.{param}"], None, False
    if m := re.fullmatch(r"txt_in\.individual_token_refiner\.blocks\.(\d+)\.(.+)", module):
        prefix, sub = f"context_embedder.token_refiner.refiner_blocks.{m[1]}.", m[2]
        if sub == "self_attn_qkv":
            return [f"{prefix}attn.to_{n}.{param}" for n in "qkv"], [d, d, d], False
        if sub in _REFINER_BLOCK:
            return [f"{prefix}{_REFINER_BLOCK[sub]}.{param}"], None, False
    if m := re.fullmatch(r"double_blocks\.(\d+)\.(.+)", module):
        prefix, sub = f"transformer_blocks.{m[1]}.", m[2]
        if sub == "img_attn_qkv":
            return [f"{prefix}attn.to_{n}.{param}" for n in "qkv"], [d, d, d], False
        if sub == "txt_attn_qkv":
            return [f"{prefix}attn.add_{n}_proj.{param}" for n in "qkv"], [d, d, d], False
        if sub in _DOUBLE_BLOCK:
            return [f"{prefix}{_DOUBLE_BLOCK[sub]}.{param}"], None, False
    if m := re.fullmatch(r"single_blocks\.(\d+)\.(.+)", module):
        prefix, sub = f"single_transformer_blocks.{m[1]}.", m[2]
        if sub == "linear1":
            names = [f"{prefix}attn.to_{n}.{param}" for n in "qkv"] + [f"{prefix}proj_mlp.{param}"]
            return names, [d, d, d, config.mlp_hidden], False
        if sub in _SINGLE_BLOCK:
            return [f"{prefix}{_SINGLE_BLOCK[sub]}.{param}"], None, False
    raise CheckpointError(f"no diffusers name for official key {key!r}")


def official_keys(config: DiTConfig) -> list[str]:
    """The official checkpoint's tensor names for `config` (built on the meta device)."""
    with torch.device("meta"):
        model = HunyuanVideoDiT(config)
    return list(model.state_dict())


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def diffusers_to_official_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: DiTConfig
) -> dict[str, torch.Tensor]:
    """Rename / merge a diffusers `HunyuanVideoTransformer3DModel` state dict to official names."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for key in official_keys(config):
        names, _, swap = diffusers_plan(key, config)
        missing = [n for n in names if n not in state_dict]
        if missing:
            raise CheckpointError(
                f"diffusers HunyuanVideo checkpoint is missing {missing} (needed for {key!r}); "
                f"is it another architecture or a different config?"
            )
        parts = [state_dict[n] for n in names]
        tensor = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        out[key] = _swap_halves(tensor) if swap else tensor
        used.update(names)
    extra = sorted(set(state_dict) - used)
    if extra:
        raise CheckpointError(
            f"diffusers HunyuanVideo checkpoint has {len(extra)} tensors this config does not use, "
            f"e.g. {extra[:3]} (token_replace I2V variants are not supported)"
        )
    return out


def official_to_diffusers_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: DiTConfig
) -> dict[str, torch.Tensor]:
    """Inverse of `diffusers_to_official_state_dict`: split qkv / linear1, swap final shift/scale."""
    expected = official_keys(config)
    missing = sorted(set(expected) - set(state_dict))
    extra = sorted(set(state_dict) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"official HunyuanVideo state dict does not match the config: missing {missing[:3]}, "
            f"unexpected {extra[:3]}"
        )
    out: dict[str, torch.Tensor] = {}
    for key in expected:
        names, sizes, swap = diffusers_plan(key, config)
        tensor = _swap_halves(state_dict[key]) if swap else state_dict[key]
        if sizes is None:
            out[names[0]] = tensor
            continue
        if tensor.shape[0] != sum(sizes):
            raise CheckpointError(f"{key!r} has {tensor.shape[0]} rows, expected {sum(sizes)} = {sizes}")
        out.update(zip(names, torch.split(tensor, sizes, dim=0), strict=True))
    return out


def config_from_diffusers(data: Mapping[str, Any]) -> DiTConfig:
    """DiTConfig from a diffusers `HunyuanVideoTransformer3DModel` config.json (its defaults apply)."""
    if data.get("image_condition_type") not in (None, "latent_concat"):
        raise CheckpointError(f"image_condition_type={data['image_condition_type']!r} is not supported")
    if data.get("qk_norm", "rms_norm") != "rms_norm":
        raise CheckpointError(f"qk_norm={data['qk_norm']!r} is not supported (only rms_norm)")
    heads, head_dim = int(data.get("num_attention_heads", 24)), int(data.get("attention_head_dim", 128))
    in_ch, out_ch = int(data.get("in_channels", 16)), data.get("out_channels")
    out_ch = int(out_ch) if out_ch else in_ch
    p, p_t = int(data.get("patch_size", 2)), int(data.get("patch_size_t", 1))
    cfg = DiTConfig(
        hidden_size=heads * head_dim,
        num_heads=heads,
        depth_double=int(data.get("num_layers", 20)),
        depth_single=int(data.get("num_single_layers", 40)),
        mlp_ratio=float(data.get("mlp_ratio", 4.0)),
        patch_size=(p_t, p, p),
        latent_channels=out_ch,
        image_condition=data.get("image_condition_type"),
        rope_axes_dim=tuple(data.get("rope_axes_dim", OFFICIAL_ROPE_AXES_128)),  # type: ignore[arg-type]
        rope_theta=float(data.get("rope_theta", 256.0)),
        text_dim=int(data.get("text_embed_dim", 4096)),
        pooled_dim=int(data.get("pooled_projection_dim", 768)),
        refiner_depth=int(data.get("num_refiner_layers", 2)),
        guidance_embed=bool(data.get("guidance_embeds", True)),
    )
    if cfg.in_channels != in_ch:
        raise CheckpointError(
            f"diffusers config in_channels={in_ch} does not fit out_channels={out_ch} with "
            f"image_condition_type={cfg.image_condition!r} (expected {cfg.in_channels})"
        )
    return cfg


def diffusers_config(config: DiTConfig) -> dict[str, Any]:
    """Constructor arguments (= config.json fields) of diffusers' HunyuanVideoTransformer3DModel for
    the same architecture: the inverse of `config_from_diffusers`."""
    if config.patch_size[1] != config.patch_size[2]:
        raise ValueError(f"diffusers needs a square spatial patch, got patch_size={config.patch_size}")
    kwargs: dict[str, Any] = dict(
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        num_attention_heads=config.num_heads,
        attention_head_dim=config.head_dim,
        num_layers=config.depth_double,
        num_single_layers=config.depth_single,
        num_refiner_layers=config.refiner_depth,
        mlp_ratio=config.mlp_ratio,
        patch_size=config.patch_size[1],
        patch_size_t=config.patch_size[0],
        guidance_embeds=config.guidance_embed,
        text_embed_dim=config.text_dim,
        pooled_projection_dim=config.pooled_dim,
        rope_theta=config.rope_theta,
        rope_axes_dim=config.rope_axes_dim,
    )
    if config.image_condition is not None:
        kwargs["image_condition_type"] = config.image_condition
    return kwargs


def default_rope_axes(head_dim: int) -> tuple[int, int, int]:
    """RoPE split used when nothing says otherwise.

    head_dim 128 -> the official (16, 56, 56); a head_dim of one of our presets -> that preset's
    split; otherwise the official proportions: h = w = the largest even number <= 7/16 head_dim,
    t gets the rest (so 128 would also give (16, 56, 56)).
    """
    if head_dim == 128:
        return OFFICIAL_ROPE_AXES_128
    for preset in DIT_PRESETS.values():
        if preset.head_dim == head_dim:
            return preset.rope_axes_dim
    hw = (head_dim * 7 // 16) // 2 * 2
    return (head_dim - 2 * hw, hw, hw)


def _need(state_dict: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state_dict:
        sample = sorted(state_dict)[:5]
        raise CheckpointError(
            f"not an official HunyuanVideo DiT checkpoint: missing {key!r} (first keys: {sample})"
        )
    return state_dict[key]


def _count_blocks(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    indices = {int(m[1]) for k in state_dict if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


def infer_dit_config(
    state_dict: Mapping[str, torch.Tensor], rope_axes_dim: tuple[int, int, int] | None = None
) -> DiTConfig:
    """Read the architecture off an official-format state dict's tensor shapes.

    RoPE axes and theta leave no trace in the weights; `rope_axes_dim` (e.g. from a sibling
    config.json) wins, else `default_rope_axes(head_dim)`; theta is the official 256.
    """
    patch_w = _need(state_dict, "img_in.proj.weight")
    if patch_w.ndim != 5:
        raise CheckpointError(
            f"img_in.proj.weight has shape {tuple(patch_w.shape)}; expected a Conv3d weight"
        )
    hidden, in_ch = int(patch_w.shape[0]), int(patch_w.shape[1])
    patch = tuple(int(s) for s in patch_w.shape[2:])
    depth_double = _count_blocks(state_dict, "double_blocks")
    depth_single = _count_blocks(state_dict, "single_blocks")
    if depth_double:
        head_dim = int(_need(state_dict, "double_blocks.0.img_attn_q_norm.weight").shape[0])
        mlp_hidden = int(_need(state_dict, "double_blocks.0.img_mlp.fc1.weight").shape[0])
    elif depth_single:
        head_dim = int(_need(state_dict, "single_blocks.0.q_norm.weight").shape[0])
        mlp_hidden = int(_need(state_dict, "single_blocks.0.linear1.weight").shape[0]) - 3 * hidden
    else:
        raise CheckpointError("not a HunyuanVideo DiT checkpoint: no double_blocks / single_blocks found")
    final_out = int(_need(state_dict, "final_layer.linear.weight").shape[0])
    out_ch, rest = divmod(final_out, math.prod(patch))
    if rest:
        raise CheckpointError(f"final_layer.linear has {final_out} outputs, not a multiple of patch {patch}")
    if in_ch == out_ch:
        image_condition = None
    elif in_ch == 2 * out_ch + 1:
        image_condition = "latent_concat"
    else:
        raise CheckpointError(
            f"cannot interpret {in_ch} input / {out_ch} output latent channels "
            f"(expected equal, or 2*out+1 for latent_concat I2V)"
        )
    try:
        return DiTConfig(
            hidden_size=hidden,
            num_heads=hidden // head_dim,
            depth_double=depth_double,
            depth_single=depth_single,
            mlp_ratio=mlp_hidden / hidden,
            patch_size=patch,  # type: ignore[arg-type]
            latent_channels=out_ch,
            image_condition=image_condition,
            rope_axes_dim=rope_axes_dim or default_rope_axes(head_dim),
            text_dim=int(_need(state_dict, "txt_in.input_embedder.weight").shape[1]),
            pooled_dim=int(_need(state_dict, "vector_in.in_layer.weight").shape[1]),
            refiner_depth=_count_blocks(state_dict, "txt_in.individual_token_refiner.blocks"),
            timestep_freq_dim=int(_need(state_dict, "time_in.mlp.0.weight").shape[1]),
            guidance_embed="guidance_in.mlp.0.weight" in state_dict,
        )
    except ValueError as exc:
        raise CheckpointError(f"inferred DiT config is invalid: {exc}") from exc


def _sibling_rope_axes(path: Path) -> tuple[int, int, int] | None:
    sibling = path.parent / "config.json"
    if not sibling.is_file():
        return None
    axes = read_json(sibling).get("rope_axes_dim")
    return tuple(int(a) for a in axes) if axes else None  # type: ignore[return-value]


def _with_fp8_scales(state_dict: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Tencent's FP8 release keeps the scales of its float8 weights in a separate map file beside
    them (`..._fp8.pt` -> `..._fp8_map.pt`); fold them in as `<layer>.weight_scale`."""
    layers = fp8_module_names(state_dict)
    if all(f"{name}.{SCALE_SUFFIX}" in state_dict for name in layers):
        return state_dict  # no float8 weights, or they carry their scales
    map_path = tencent_fp8_map_path(path)
    if not map_path.is_file():
        raise CheckpointError(
            f"{path} holds float8 weights ({len(layers)} layers) without their scales: the FP8 map "
            f"{map_path} is missing (Tencent's FP8 release ships it beside the weights)"
        )
    logger.info("reading the FP8 scales of %s from %s", path, map_path)
    return tencent_fp8_state_dict(state_dict, read_state_dict(map_path), str(path))


def _looks_diffusers(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return "x_embedder.proj.weight" in state_dict


def load_dit(
    path: str | Path,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    config: DiTConfig | None = None,
) -> HunyuanVideoDiT:
    """Load a DiT from an official file, a diffusers directory or our own format (auto-detected)."""
    path = Path(path)
    if path.is_dir():
        config_path = path / OWN_CONFIG_NAME
        if is_own_format(path, FORMAT_NAME):
            data = read_json(config_path)
            data.pop(FORMAT_KEY, None)
            config = config or DiTConfig.from_dict(data)
            state_dict = read_state_dict(path / OWN_WEIGHTS_NAME)
            kind = "own"
        elif config_path.is_file() and read_json(config_path).get("_class_name") == DIFFUSERS_CLASS:
            config = config or config_from_diffusers(read_json(config_path))
            state_dict = diffusers_to_official_state_dict(read_safetensors_dir(path), config)
            kind = "diffusers"
        else:
            raise CheckpointError(
                f"{path} is neither a '{FORMAT_NAME}' directory nor a diffusers {DIFFUSERS_CLASS} "
                f"directory (config.json missing or of another model)"
            )
    elif path.is_file():
        state_dict = _with_fp8_scales(read_state_dict(path), path)
        if _looks_diffusers(state_dict):
            if config is None:
                raise CheckpointError(
                    f"{path} holds diffusers-named tensors; pass config= or load the diffusers directory"
                )
            state_dict = diffusers_to_official_state_dict(state_dict, config)
        config = config or infer_dit_config(state_dict, _sibling_rope_axes(path))
        kind = "official"
    else:
        raise CheckpointError(f"DiT checkpoint not found: {path}")

    with torch.device("meta"):
        model = HunyuanVideoDiT(config)
    fp8_layers = fp8_module_names(state_dict)
    if fp8_layers:  # FP8 weights (hyv.models.fp8): the matching layers become FP8Linear
        quantize_linears_(model, fp8_layers)
        kind = f"{kind} FP8 ({len(fp8_layers)} layers)"
    load_into(model, state_dict, f"HunyuanVideo DiT ({kind} format, {path})")
    model.to(device=device, dtype=parse_dtype(dtype))
    logger.info("loaded %s-format DiT from %s: %.3fB parameters", kind, path, model.num_parameters() / 1e9)
    return model.eval()


def save_dit(
    model: HunyuanVideoDiT, directory: str | Path, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write our format; `metadata` (str -> str) lands in the safetensors header."""
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"DiT metadata must map str to str, got {key!r}: {type(value).__name__}")
    return save_own_format(directory, model.state_dict(), model.config.to_dict(), FORMAT_NAME, metadata)


def read_dit_metadata(directory: str | Path) -> dict[str, str]:
    """The string metadata stored by `save_dit` (empty if none)."""
    directory = Path(directory)
    if not is_own_format(directory, FORMAT_NAME):
        raise CheckpointError(f"{directory} is not a '{FORMAT_NAME}' directory")
    try:
        with safe_open(str(directory / OWN_WEIGHTS_NAME), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read metadata of {directory / OWN_WEIGHTS_NAME}: {exc}") from exc
