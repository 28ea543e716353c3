"""Tiny, random Hugging Face text models and tokenizers built offline, for tests.

Nothing here touches the network: the LLaMA-3-style tokenizer is a byte-level BPE trained in
memory with `tokenizers` (with LLaMA-3's pre-tokenizer regex and special tokens, so the
HunyuanVideo prompt template behaves as with the real tokenizer), the CLIP tokenizer is built
from a byte-level vocabulary written here, and the models are randomly initialised.

Importable as `tests.models.hf_fixtures` by any test that needs a HunyuanVideo-like text stack;
the model and tokenizer builders are tests/fixtures/make_release_fixtures.py's (which also writes
whole tiny HunyuanVideo release folders).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import CLIPTextModel, CLIPTokenizer, LlamaModel, PreTrainedTokenizerFast

# The builders live in the release-fixture script, which must run without the checkout on sys.path.
from tests.fixtures.make_release_fixtures import (
    LLAMA3_SPECIAL_TOKENS,
    LLAMA3_SPLIT_PATTERN,
    SAMPLE_PROMPTS,
    build_clip_model,
    build_clip_tokenizer,
    build_llama_model,
    build_llama_tokenizer,
)

__all__ = [
    "LLAMA3_SPECIAL_TOKENS",
    "LLAMA3_SPLIT_PATTERN",
    "SAMPLE_PROMPTS",
    "TinyHunyuanTextStack",
    "build_clip_model",
    "build_clip_tokenizer",
    "build_llama_model",
    "build_llama_tokenizer",
    "save_tiny_hunyuan_text_stack",
]


@dataclass
class TinyHunyuanTextStack:
    """The four components and where they were saved (diffusers layout under `root`)."""

    root: Path
    llama: LlamaModel
    llama_tokenizer: PreTrainedTokenizerFast
    clip: CLIPTextModel
    clip_tokenizer: CLIPTokenizer

    @property
    def llm_dir(self) -> Path:
        return self.root / "text_encoder"

    @property
    def clip_dir(self) -> Path:
        return self.root / "text_encoder_2"

    @property
    def llm_tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    @property
    def clip_tokenizer_dir(self) -> Path:
        return self.root / "tokenizer_2"


def save_tiny_hunyuan_text_stack(root: str | Path, *, official_layout: bool = False) -> TinyHunyuanTextStack:
    """Build the tiny LLaMA + CLIP stack and save it.

    Diffusers layout: `text_encoder/`, `tokenizer/`, `text_encoder_2/`, `tokenizer_2/`.
    `official_layout=True` writes each tokenizer next to its model instead (as Tencent's release
    ships `text_encoder/` and `text_encoder_2/` with the tokenizer files inside).
    """
    root = Path(root)
    llama_tok = build_llama_tokenizer()
    clip_tok = build_clip_tokenizer()
    llama = build_llama_model(len(llama_tok))
    clip = build_clip_model(clip_tok)
    llama.save_pretrained(root / "text_encoder")
    clip.save_pretrained(root / "text_encoder_2")
    llama_tok.save_pretrained(root / ("text_encoder" if official_layout else "tokenizer"))
    clip_tok.save_pretrained(root / ("text_encoder_2" if official_layout else "tokenizer_2"))
    return TinyHunyuanTextStack(root, llama, llama_tok, clip, clip_tok)
