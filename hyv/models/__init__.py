"""HunyuanVideo model family: the DiT, the 3D causal VAE and the text encoders.

Model code is plain PyTorch; compilation, sharding and fused kernels are applied from outside
(hyv/engine/, hyv/kernels/) through the entry points in `hyv.models.ops`.
"""

from hyv.models.checkpoint_io import CheckpointError
from hyv.models.ops import (
    apply_rotary_emb,
    attention,
    gated_residual,
    layernorm_modulate,
    rms_norm,
    rope_tables,
)

# --- DiT (models/dit*.py) ---
# isort: split
from hyv.models.dit import HunyuanVideoDiT
from hyv.models.dit_config import DIT_PRESETS, DiTConfig, dit_preset
from hyv.models.dit_loading import (
    diffusers_to_official_state_dict,
    infer_dit_config,
    load_dit,
    official_to_diffusers_state_dict,
    read_dit_metadata,
    save_dit,
)

# --- VAE (models/vae*.py) ---
from hyv.models.vae import CausalVAE3D, DiagonalGaussian, from_dit_latents, to_dit_latents
from hyv.models.vae_config import VAEConfig, VAETiling, vae_preset
from hyv.models.vae_loading import load_vae, save_vae

# --- Text encoders (models/text_encoder*.py) ---
# isort: split
from hyv.models.text_encoder import TextEmbeddings, TextEncoder, load_text_encoder
from hyv.models.text_encoder_builtin import (
    BuiltinTextEncoder,
    BuiltinTextEncoderConfig,
    WordTokenizer,
    default_caption_vocabulary,
)
from hyv.models.text_encoder_hf import HunyuanTextEncoder

__all__ = [
    "DIT_PRESETS",
    "BuiltinTextEncoder",
    "BuiltinTextEncoderConfig",
    "CausalVAE3D",
    "CheckpointError",
    "DiTConfig",
    "DiagonalGaussian",
    "HunyuanTextEncoder",
    "HunyuanVideoDiT",
    "TextEmbeddings",
    "TextEncoder",
    "VAEConfig",
    "VAETiling",
    "WordTokenizer",
    "apply_rotary_emb",
    "attention",
    "default_caption_vocabulary",
    "diffusers_to_official_state_dict",
    "dit_preset",
    "from_dit_latents",
    "gated_residual",
    "infer_dit_config",
    "layernorm_modulate",
    "load_dit",
    "load_text_encoder",
    "load_vae",
    "official_to_diffusers_state_dict",
    "read_dit_metadata",
    "rms_norm",
    "rope_tables",
    "save_dit",
    "save_vae",
    "to_dit_latents",
    "vae_preset",
]
