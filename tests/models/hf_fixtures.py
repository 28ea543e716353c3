"""Tiny, random Hugging Face text models and tokenizers built offline, for tests.

Nothing here touches the network: the LLaMA-3-style tokenizer is a byte-level BPE trained in
memory with `tokenizers` (with LLaMA-3's pre-tokenizer regex and special tokens, so the
HunyuanVideo prompt template behaves as with the real tokenizer), the CLIP tokenizer is built
from a byte-level vocabulary written here, and the models are randomly initialised.

Importable as `tests.models.hf_fixtures` by any test that needs a HunyuanVideo-like text stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    LlamaConfig,
    LlamaModel,
    PreTrainedTokenizerFast,
)

# LLaMA-3's split pattern (from its tokenizer.json): "\n\n" stays one chunk before the prompt.
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<pad>",
]

SAMPLE_PROMPTS = [
    "a red circle moving left on a black background",
    "A cat walks on the grass, realistic",
    "a small blue triangle growing on a gray background with the camera panning in slowly",
]


def _training_texts() -> list[str]:
    # Imported lazily so the fixtures do not depend on the module under test at import time.
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    template = str(DEFAULT_PROMPT_TEMPLATE["template"])
    # The raw template is included so "{}" becomes one token, as with the real LLaMA-3 vocabulary;
    # diffusers' crop_start=None rule (template length - 2) relies on that.
    return [template, *(template.format(p) for p in SAMPLE_PROMPTS)] * 4


def build_llama_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer shaped like LLaMA-3's (BOS prepended, right padding)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=LLAMA3_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_texts(), trainer=trainer)
    bos_id = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A",
        pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        pad_token="<pad>",
        padding_side="right",
    )


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP's reversible byte -> printable character table.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def build_clip_tokenizer() -> CLIPTokenizer:
    """A CLIP BPE tokenizer over single bytes plus a handful of merges."""
    chars = list(_bytes_to_unicode().values())
    vocab_tokens = chars + [c + "</w>" for c in chars]
    merges = ["r e", "re d</w>", "c i", "ci r", "t h", "th e</w>", "o n</w>"]
    for merge in merges:
        vocab_tokens.append(merge.replace(" ", ""))
    vocab_tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(vocab_tokens))}
    return CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges], model_max_length=77)


def build_llama_model(vocab_size: int, seed: int = 0, num_layers: int = 4) -> LlamaModel:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
    )
    return LlamaModel(config).eval()


def build_clip_model(tokenizer: CLIPTokenizer, seed: int = 1) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=24,
        intermediate_size=48,
        projection_dim=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config).eval()


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
