"""HunyuanVideo DiT (the 13B "HunyuanVideo-T/2" transformer and smaller siblings).

Data flow of `HunyuanVideoDiT.forward`:

    latent video (B, C, T, H, W) --img_in (3D patches)--> video tokens (B, t*h*w, D)
    LLM text states (B, L, text_dim) --txt_in (token refiner)--> text tokens (B, L, D)
    timestep, pooled CLIP vector, guidance --> conditioning vector vec (B, D)
    depth_double x DoubleStreamBlock(video, text)   separate weights, joint attention
    depth_single x SingleStreamBlock([video; text]) shared weights
    FinalLayer(video tokens) --unpatchify--> (B, C_out, T, H, W)

The forward is composed of reusable stages (`embed`, `run_blocks`, `final_layer`, `unpatchify`) so
that hyv/engine/parallel can run them on a shard of the video tokens without touching the blocks.

Padded text tokens (mask 0) are masked out as attention keys everywhere, so they cannot change
the video tokens. Parameter names are those of the official checkpoint.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from hyv.models.dit_blocks import DoubleStreamBlock, FinalLayer, Modulation, SingleStreamBlock
from hyv.models.dit_config import DiTConfig
from hyv.models.embeddings import MLPEmbedder, PatchEmbed, TimestepEmbedder
from hyv.models.ops import rope_tables
from hyv.models.token_refiner import IndividualTokenRefinerBlock, SingleTokenRefiner

logger = logging.getLogger(__name__)


@dataclass
class DiTState:
    """Everything the blocks need, produced by `HunyuanVideoDiT.embed`."""

    img: torch.Tensor  # (B, Li, D) video tokens, Li = t*h*w
    txt: torch.Tensor  # (B, Lt, D) text tokens
    vec: torch.Tensor  # (B, D) conditioning vector
    cos: torch.Tensor  # (Li, Dh) fp32 RoPE tables of the video tokens
    sin: torch.Tensor  # (Li, Dh)
    key_mask: torch.Tensor  # (B, Li+Lt) bool, True = real key (video tokens, then text)
    grid: tuple[int, int, int]  # patched (t, h, w)


def _zero_(module: nn.Module) -> None:
    for param in module.parameters():
        nn.init.zeros_(param)


def trim_text_padding(text: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the text columns after the last real token of the whole batch.

    Padded tokens are masked as keys everywhere (token refiner and joint attention), so they never
    change a real output; dropping them is exact and saves their compute in every block. Text
    encoders pad to a fixed length (256 for LLaVA-LLaMA-3) while prompts are often a tenth of that.
    Costs one device sync per forward. At least one column is kept. A mask on the meta device
    (a shape-only trace, hyv.engine.meta_trace) has no values to read: every column is kept.
    """
    if mask.device.type == "meta":
        return text, mask
    real_columns = mask.bool().any(dim=0).nonzero()  # (n, 1)
    length = int(real_columns.max()) + 1 if real_columns.numel() else 1
    if length == mask.shape[1]:
        return text, mask
    return text[:, :length], mask[:, :length]  # (B, L', D), (B, L')


class HunyuanVideoDiT(nn.Module):
    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        d = c.hidden_size
        self.gradient_checkpointing = False

        self.img_in = PatchEmbed(c.patch_size, c.in_channels, d)
        self.txt_in = SingleTokenRefiner(
            c.text_dim, d, c.num_heads, c.refiner_depth, c.mlp_ratio, c.timestep_freq_dim
        )
        self.time_in = TimestepEmbedder(d, c.timestep_freq_dim)
        self.vector_in = MLPEmbedder(c.pooled_dim, d)
        self.guidance_in = TimestepEmbedder(d, c.timestep_freq_dim) if c.guidance_embed else None
        self.double_blocks = nn.ModuleList(
            [DoubleStreamBlock(d, c.num_heads, c.mlp_ratio, c.qk_norm_eps) for _ in range(c.depth_double)]
        )
        self.single_blocks = nn.ModuleList(
            [SingleStreamBlock(d, c.num_heads, c.mlp_ratio, c.qk_norm_eps) for _ in range(c.depth_single)]
        )
        self.final_layer = FinalLayer(d, math.prod(c.patch_size), c.out_channels)

    def init_weights(self) -> None:
        """Training init: Xavier linears, adaLN-Zero (every gate/modulation and the output start at
        zero, so each block starts as the identity and the model predicts zero)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, Modulation | FinalLayer):
                _zero_(module)
            elif isinstance(module, IndividualTokenRefinerBlock):
                _zero_(module.adaLN_modulation)

    def _check_inputs(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        mask: torch.Tensor,
        pooled: torch.Tensor,
        guidance: torch.Tensor | None,
    ) -> None:
        c = self.config
        if x.ndim != 5:
            raise ValueError(f"hidden_states must be 5-D (B, C, T, H, W), got shape {tuple(x.shape)}")
        b, ch, *thw = x.shape
        if ch != c.in_channels:
            raise ValueError(
                f"hidden_states has {ch} channels, expected in_channels={c.in_channels} "
                f"(latent_channels={c.latent_channels}, image_condition={c.image_condition!r})"
            )
        for axis, size, p in zip("THW", thw, c.patch_size, strict=True):
            if size % p:
                raise ValueError(
                    f"latent {axis}={size} is not divisible by patch size {p} (patch {c.patch_size})"
                )
        if text.ndim != 3 or text.shape[0] != b or text.shape[2] != c.text_dim:
            raise ValueError(
                f"encoder_hidden_states must be (B={b}, L, text_dim={c.text_dim}), got {tuple(text.shape)}"
            )
        if tuple(mask.shape) != tuple(text.shape[:2]):
            raise ValueError(
                f"encoder_attention_mask shape {tuple(mask.shape)} does not match the text (B, L) = "
                f"{tuple(text.shape[:2])}"
            )
        if tuple(pooled.shape) != (b, c.pooled_dim):
            raise ValueError(
                f"pooled_projections must be (B, pooled_dim) = {(b, c.pooled_dim)}, got {tuple(pooled.shape)}"
            )
        if tuple(timestep.shape) != (b,):
            raise ValueError(f"timestep must have shape (B,) = ({b},), got {tuple(timestep.shape)}")
        if c.guidance_embed:
            if guidance is None:
                raise ValueError(
                    "guidance is required: this model has a guidance embedding (guidance_embed=True); "
                    "pass the guidance scale times 1000, shape (B,)"
                )
            if tuple(guidance.shape) != (b,):
                raise ValueError(f"guidance must have shape (B,) = ({b},), got {tuple(guidance.shape)}")

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
        pooled_projections: torch.Tensor,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the flow-matching velocity, same arguments as diffusers'
        `HunyuanVideoTransformer3DModel` (timestep in [0, 1000], guidance already x1000).

        Composed of `embed` -> `run_blocks` -> `final_layer` (video tokens) -> `unpatchify`; the
        sequence-parallel engine (hyv/engine/parallel) runs the same stages on a shard of the video."""
        s = self.embed(
            hidden_states,
            timestep,
            encoder_hidden_states,
            encoder_attention_mask,
            pooled_projections,
            guidance,
        )
        x = self.run_blocks(s.img, s.txt, s.vec, s.cos, s.sin, s.key_mask)  # (B, Li+Lt, D)
        out = self.final_layer(x[:, : s.img.shape[1]], s.vec)  # (B, Li, C_out*pt*ph*pw)
        return self.unpatchify(out, s.grid)

    def embed(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
        pooled_projections: torch.Tensor,
        guidance: torch.Tensor | None = None,
    ) -> DiTState:
        """Check the inputs; embed the video, the text and the conditioning; build the RoPE tables
        and the joint key mask. Same arguments as `forward`."""
        c = self.config
        if timestep.ndim == 0:
            timestep = timestep.expand(hidden_states.shape[0])
        self._check_inputs(
            hidden_states,
            timestep,
            encoder_hidden_states,
            encoder_attention_mask,
            pooled_projections,
            guidance,
        )
        _, _, T, H, W = hidden_states.shape
        pt, ph, pw = c.patch_size
        t, h, w = T // pt, H // ph, W // pw  # patched grid
        cos, sin = rope_tables(t, h, w, c.rope_axes_dim, c.rope_theta, hidden_states.device)  # (t*h*w, Dh)

        vec = self.time_in(timestep) + self.vector_in(pooled_projections)  # (B, D)
        if self.guidance_in is not None:
            assert guidance is not None  # checked above
            vec = vec + self.guidance_in(guidance)
        # guidance passed to a model without a guidance embedding is ignored, as in diffusers, so
        # callers can pass it unconditionally.

        text, text_mask = trim_text_padding(encoder_hidden_states, encoder_attention_mask)
        img = self.img_in(hidden_states)  # (B, Li=t*h*w, D)
        txt = self.txt_in(text, timestep, text_mask)  # (B, Lt, D)
        video_keys = torch.ones(img.shape[:2], dtype=torch.bool, device=img.device)
        key_mask = torch.cat([video_keys, text_mask.to(torch.bool)], dim=1)  # (B, Li+Lt)
        return DiTState(img, txt, vec, cos, sin, key_mask, (t, h, w))

    def run_blocks(
        self,
        img: torch.Tensor,
        txt: torch.Tensor,
        vec: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        key_mask: torch.Tensor,
        skip_double: int = 0,
    ) -> torch.Tensor:
        """The double- then single-stream blocks: img (B, Li, D), txt (B, Lt, D), tables (Li, Dh),
        key_mask (B, Li+Lt) -> joint tokens (B, Li+Lt, D), video first.

        Li may be a shard of the video (sequence parallelism) as long as cos/sin, key_mask and the
        attention implementation (`hyv.models.ops.use_attention`) agree with it. `skip_double`: the
        first double-stream blocks the caller already ran (hyv.engine.step_cache runs the first one
        alone to decide whether the rest is needed)."""
        for block in self.double_blocks[skip_double:]:
            img, txt = self._run(block, img, txt, vec, cos, sin, key_mask)

        x = torch.cat([img, txt], dim=1)  # (B, Li+Lt, D), video first: rope covers the prefix
        for block in self.single_blocks:
            x = self._run(block, x, vec, cos, sin, key_mask)
        return x

    def unpatchify(self, out: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """Final-layer tokens (B, t*h*w, C_out*pt*ph*pw) -> latent video (B, C_out, T, H, W)."""
        pt, ph, pw = self.config.patch_size
        t, h, w = grid
        return rearrange(
            out,
            "b (t h w) (c pt ph pw) -> b c (t pt) (h ph) (w pw)",
            t=t,
            h=h,
            w=w,
            pt=pt,
            ph=ph,
            pw=pw,
        )

    def _run(self, block: nn.Module, *args: torch.Tensor) -> Any:
        # Activation checkpointing per block trades one extra forward for O(depth) less memory.
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
