"""The text-encoder interface shared by every backend, and the factory that picks a backend.

A text encoder turns prompts into what the DiT conditions on:

* `states` (B, L, D): per-token hidden states, padded to the encoder's `max_length`;
* `mask` (B, L) int64: 1 for real tokens, 0 for padding;
* `pooled` (B, D2): one vector per prompt (CLIP-L's pooled output for HunyuanVideo).

Backends:

* `HunyuanTextEncoder` (hyv/models/text_encoder_hf.py): LLaVA-LLaMA-3-8B + CLIP-L, numerically
  identical to diffusers' `HunyuanVideoPipeline.encode_prompt`.
* `BuiltinTextEncoder` (hyv/models/text_encoder_builtin.py): a small word-level transformer trained
  with the bundled model.

Negative prompts are ordinary prompts; classifier-free guidance encodes them with the same call.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from hyv.models.checkpoint_io import FORMAT_KEY, OWN_CONFIG_NAME, is_own_format, parse_dtype, read_json

logger = logging.getLogger(__name__)

BUILTIN_FORMAT = "hyv-text-encoder"
BUILTIN_SPEC_PREFIX = "builtin:"


@dataclass(frozen=True)
class TextEmbeddings:
    """Encoder output; unpacks as `states, mask, pooled = encoder.encode(prompts)`."""

    states: torch.Tensor  # (B, L, D)
    mask: torch.Tensor  # (B, L) int64, 1 = real token
    pooled: torch.Tensor  # (B, D2)

    def __post_init__(self) -> None:
        b, length = self.mask.shape
        if self.states.shape[:2] != (b, length) or self.pooled.shape[0] != b:
            raise ValueError(
                f"inconsistent text embeddings: states {tuple(self.states.shape)}, "
                f"mask {tuple(self.mask.shape)}, pooled {tuple(self.pooled.shape)}"
            )

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter((self.states, self.mask, self.pooled))

    @property
    def batch_size(self) -> int:
        return int(self.mask.shape[0])

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> TextEmbeddings:
        """Move to `device`; `dtype` applies to the float tensors only (the mask stays int64)."""
        return TextEmbeddings(
            self.states.to(device=device, dtype=dtype),
            self.mask.to(device=device),
            self.pooled.to(device=device, dtype=dtype),
        )


@runtime_checkable
class TextEncoder(Protocol):
    """What the pipeline needs from a text encoder.

    `to(device=None, dtype=None)` moves the weights and returns the encoder. It is declared with a
    gradual signature so that an `nn.Module` (whose `to` is overloaded) satisfies the protocol.
    """

    @property
    def text_dim(self) -> int:
        """D of `states`."""
        ...

    @property
    def pooled_dim(self) -> int:
        """D2 of `pooled`."""
        ...

    @property
    def max_length(self) -> int:
        """L of `states` and `mask` (prompts are padded or truncated to it)."""
        ...

    def encode(self, prompts: list[str]) -> TextEmbeddings: ...

    def to(self, *args: Any, **kwargs: Any) -> Any: ...


def validate_prompts(prompts: Sequence[str]) -> list[str]:
    """A non-empty list of strings, or ValueError.

    A bare string is rejected too: iterating it would silently encode one prompt per character.
    """
    if isinstance(prompts, str | bytes) or not isinstance(prompts, Sequence):
        raise ValueError(f"prompts must be a list of strings, got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise ValueError("prompts must not be empty")
    bad = [(i, type(p).__name__) for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        raise ValueError(f"every prompt must be a str; got non-strings at (index, type) {bad[:5]}")
    return list(prompts)


def load_text_encoder(
    spec_or_path: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str | None = None,
    **kwargs: Any,
) -> TextEncoder:
    """Build the text encoder a directory (or spec) describes.

    * `builtin:<preset>` (e.g. `builtin:tiny`): a fresh, randomly initialised `BuiltinTextEncoder`
      with the default caption vocabulary;
    * a directory in the built-in own format (`config.json` tagged "hyv-text-encoder" +
      `model.safetensors` + `tokenizer.json`) -> `BuiltinTextEncoder`;
    * a directory holding `text_encoder/` and `text_encoder_2/` -> `HunyuanTextEncoder`. The
      tokenizers are read from `tokenizer/` and `tokenizer_2/` when present (diffusers layout),
      else from the model directories themselves (Tencent's official layout).

    Extra keyword arguments go to the backend's constructor (e.g. `max_length`, `crop_start`).
    """
    torch_dtype = parse_dtype(dtype)
    if isinstance(spec_or_path, str) and spec_or_path.startswith(BUILTIN_SPEC_PREFIX):
        from hyv.models.text_encoder_builtin import (
            BuiltinTextEncoder,
            BuiltinTextEncoderConfig,
            WordTokenizer,
            default_caption_vocabulary,
        )

        config = BuiltinTextEncoderConfig.preset(spec_or_path[len(BUILTIN_SPEC_PREFIX) :])
        encoder = BuiltinTextEncoder(config, WordTokenizer(default_caption_vocabulary()))
        return encoder.to(device=device, dtype=torch_dtype)

    path = Path(spec_or_path)
    if not path.exists():
        raise FileNotFoundError(f"text encoder path does not exist: {path}")
    if not path.is_dir():
        raise ValueError(f"text encoder path {path} is a file; expected a directory (see load_text_encoder)")

    if is_own_format(path, BUILTIN_FORMAT):
        from hyv.models.text_encoder_builtin import BuiltinTextEncoder

        return BuiltinTextEncoder.from_pretrained(path, device=device, dtype=torch_dtype)

    llm_dir, clip_dir = path / "text_encoder", path / "text_encoder_2"
    if llm_dir.is_dir() and clip_dir.is_dir():
        from hyv.models.text_encoder_hf import HunyuanTextEncoder

        tok_dir, tok2_dir = path / "tokenizer", path / "tokenizer_2"
        return HunyuanTextEncoder(
            llm_dir,
            clip_dir,
            llm_tokenizer_dir=tok_dir if tok_dir.is_dir() else None,
            clip_tokenizer_dir=tok2_dir if tok2_dir.is_dir() else None,
            dtype=torch_dtype,
            device=device,
            **kwargs,
        )

    found = ""
    config_path = path / OWN_CONFIG_NAME
    if config_path.is_file():
        tag = read_json(config_path).get(FORMAT_KEY)
        found = (
            f" (its config.json has format tag {tag!r})"
            if tag
            else " (it holds a config.json of another kind)"
        )
    raise ValueError(
        f"cannot tell which text encoder {path} holds{found}; expected either a built-in text encoder "
        f"directory (config.json with format {BUILTIN_FORMAT!r}, model.safetensors, tokenizer.json) or a "
        "HunyuanVideo directory with text_encoder/ (LLaVA-LLaMA-3) and text_encoder_2/ (CLIP-L), "
        "optionally with tokenizer/ and tokenizer_2/"
    )
