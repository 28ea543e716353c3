"""The small built-in text encoder bundled with the project's own trained model.

The bundled model is trained on synthetic captions such as "a red circle moving left on a black
background", so a word-level vocabulary covers every prompt it understands; a LLaMA-sized
encoder would be pointless. The encoder is a pre-norm transformer (RMSNorm and attention through
`hyv.models.ops`) with a learned positional embedding; `states` are the final (normed) layer output
with padded positions zeroed, `pooled` is the masked mean projected to `pooled_dim`.

Saved in the project's own format, one directory:
    config.json        architecture (format tag "hyv-text-encoder")
    model.safetensors  weights
    tokenizer.json     the word list
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hyv.models.checkpoint_io import (
    FORMAT_KEY,
    OWN_CONFIG_NAME,
    CheckpointError,
    is_own_format,
    load_into,
    parse_dtype,
    read_json,
    read_state_dict,
    save_own_format,
)
from hyv.models.ops import attention, rms_norm
from hyv.models.text_encoder import BUILTIN_FORMAT, TextEmbeddings, validate_prompts

logger = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_FORMAT = "hyv-word-tokenizer"

# The caption grammar the bundled model is trained on:
#   "a {color} {shape} {motion} on a {background} background"
CAPTION_COLORS = ("red", "green", "blue", "yellow", "cyan", "magenta", "white")
CAPTION_SHAPES = ("circle", "square", "triangle")
CAPTION_MOTIONS = (
    "moving left",
    "moving right",
    "moving up",
    "moving down",
    "growing",
    "shrinking",
    "standing still",
)
CAPTION_BACKGROUNDS = ("black", "gray")
CAPTION_TEMPLATE = "a {color} {shape} {motion} on a {background} background"
CAPTION_SLOTS: dict[str, tuple[str, ...]] = {
    "color": CAPTION_COLORS,
    "shape": CAPTION_SHAPES,
    "motion": CAPTION_MOTIONS,
    "background": CAPTION_BACKGROUNDS,
}
# One string reads better than a 60-line list literal; split once at import.
_EXTRA_WORDS = (  # noqa: SIM905
    "and two three one small large big tiny fast slow slowly quickly camera zoom zooming pan panning "
    "in out the with an image of video frame object objects shape shapes color colored left right up "
    "down center middle top bottom corner background foreground over under while then is are it "
    "bright dark light moves rotating rotates spinning bouncing still"
).split()

_WORD_RE = re.compile(r"[a-z0-9]+")


def caption_grammar(words: Iterable[str]) -> dict[str, Any] | None:
    """The caption grammar as far as `words` cover it: each slot keeps the values whose words are
    all known; None when the template's own words or a whole slot are missing. Saved with the
    tokenizer so a bundle says which captions its model was trained on (the service shows them:
    hyv.engine.prompt_vocabulary, which reads this without torch)."""
    known = set(words)
    if not {"a", "on", "background"} <= known:
        return None
    slots = {
        slot: [value for value in values if set(value.split()) <= known]
        for slot, values in CAPTION_SLOTS.items()
    }
    if not all(slots.values()):
        return None
    return {"template": CAPTION_TEMPLATE, "slots": slots}


def default_caption_vocabulary() -> list[str]:
    """Every word of the caption grammar, then a few common extras; no duplicates, stable order."""
    words: list[str] = ["a", "on", "background"]
    for phrase in (*CAPTION_COLORS, *CAPTION_SHAPES, *CAPTION_MOTIONS, *CAPTION_BACKGROUNDS):
        words.extend(phrase.split())
    words.extend(_EXTRA_WORDS)
    return list(dict.fromkeys(words))


class WordTokenizer:
    """Lowercases, splits on non-alphanumerics, maps words to ids; `<unk>` for the rest.

    Ids 0-3 are `<pad>`, `<unk>`, `<bos>`, `<eos>`; each encoded prompt is
    `<bos> words... <eos>` padded with `<pad>` to the requested length.
    """

    PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
    SPECIALS = (PAD, UNK, BOS, EOS)
    pad_id, unk_id, bos_id, eos_id = 0, 1, 2, 3

    def __init__(self, words: Iterable[str]) -> None:
        vocab = list(dict.fromkeys(w.lower() for w in words))
        bad = [w for w in vocab if not _WORD_RE.fullmatch(w)]
        if bad:
            raise ValueError(f"vocabulary words must be lowercase alphanumeric, got {bad[:5]}")
        self.words: list[str] = vocab
        self.token_to_id: dict[str, int] = {t: i for i, t in enumerate((*self.SPECIALS, *vocab))}
        # Unknown words seen since construction; useful to spot prompts outside the training grammar.
        self.unknown_counts: Counter[str] = Counter()

    @property
    def vocab_size(self) -> int:
        return len(self.token_to_id)

    @staticmethod
    def split(text: str) -> list[str]:
        return _WORD_RE.findall(text.lower())

    def encode(self, text: str) -> list[int]:
        """Word ids without BOS/EOS or padding."""
        ids = []
        unknown = []
        for word in self.split(text):
            idx = self.token_to_id.get(word)
            if idx is None:
                unknown.append(word)
                idx = self.unk_id
            ids.append(idx)
        if unknown:
            self.unknown_counts.update(unknown)
            logger.debug("%d unknown word(s) mapped to %s: %s", len(unknown), self.UNK, unknown)
        return ids

    def batch_encode(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, mask), both (B, max_length) int64; over-long prompts are truncated."""
        if max_length < 2:
            raise ValueError(f"max_length must leave room for <bos> and <eos>, got {max_length}")
        ids = torch.full((len(texts), max_length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(texts), max_length), dtype=torch.long)
        for row, text in enumerate(texts):
            words = self.encode(text)
            if len(words) > max_length - 2:
                logger.warning(
                    "prompt %d has %d words, more than the %d the text encoder takes; truncated: %r",
                    row,
                    len(words),
                    max_length - 2,
                    text,
                )
                words = words[: max_length - 2]
            seq = [self.bos_id, *words, self.eos_id]
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        return ids, mask

    def save(self, path: str | Path) -> None:
        """The word list, and the caption grammar as far as it covers it (what the service shows as
        what the model understands); `load` reads the words only."""
        payload: dict[str, Any] = {
            "format": TOKENIZER_FORMAT,
            "version": 1,
            "specials": list(self.SPECIALS),
            "words": self.words,
        }
        grammar = caption_grammar(self.words)
        if grammar is not None:
            payload["grammar"] = grammar
        Path(path).write_text(json.dumps(payload, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> WordTokenizer:
        data = read_json(Path(path))
        if data.get("format") != TOKENIZER_FORMAT or not isinstance(data.get("words"), list):
            raise CheckpointError(f"{path} is not a {TOKENIZER_FORMAT} file")
        if data.get("specials", list(cls.SPECIALS)) != list(cls.SPECIALS):
            raise CheckpointError(f"{path}: unexpected special tokens {data.get('specials')}")
        return cls(data["words"])


@dataclass(frozen=True)
class BuiltinTextEncoderConfig:
    dim: int = 256
    pooled_dim: int = 256
    num_layers: int = 3
    num_heads: int = 4
    mlp_ratio: float = 4.0
    max_length: int = 32
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if min(self.dim, self.pooled_dim, self.num_layers, self.num_heads) < 1 or self.max_length < 2:
            raise ValueError(f"invalid text encoder config {self}")

    @classmethod
    def preset(cls, name: str) -> BuiltinTextEncoderConfig:
        presets = {
            "tiny": cls(dim=32, pooled_dim=16, num_layers=2, num_heads=2, max_length=32),
            "small": cls(dim=128, pooled_dim=128, num_layers=2, num_heads=4, max_length=32),
        }
        if name not in presets:
            raise ValueError(f"unknown text encoder preset {name!r}; choose one of {sorted(presets)}")
        return presets[name]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BuiltinTextEncoderConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"unknown text encoder config keys {unknown}")
        return cls(**data)


class _Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: BuiltinTextEncoderConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.eps = config.norm_eps
        hidden = int(config.dim * config.mlp_ratio)
        self.norm1 = nn.Parameter(torch.ones(config.dim))
        self.qkv = nn.Linear(config.dim, 3 * config.dim)
        self.proj = nn.Linear(config.dim, config.dim)
        self.norm2 = nn.Parameter(torch.ones(config.dim))
        self.fc1 = nn.Linear(config.dim, hidden)
        self.fc2 = nn.Linear(hidden, config.dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(rms_norm(x, self.norm1, self.eps)).unflatten(-1, (3, self.num_heads, -1)).unbind(2)
        x = x + self.proj(attention(q, k, v, key_padding_mask=key_mask).flatten(2))
        h = nn.functional.gelu(self.fc1(rms_norm(x, self.norm2, self.eps)), approximate="tanh")
        return x + self.fc2(h)


class BuiltinTextEncoder(nn.Module):
    """Word-level transformer text encoder; trainable, implements `TextEncoder`."""

    def __init__(self, config: BuiltinTextEncoderConfig, tokenizer: WordTokenizer) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.token_embedding = nn.Embedding(tokenizer.vocab_size, config.dim)
        self.position_embedding = nn.Parameter(torch.zeros(config.max_length, config.dim))
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.num_layers))
        self.final_norm = nn.Parameter(torch.ones(config.dim))
        self.pool_proj = nn.Linear(config.dim, config.pooled_dim)
        if not self.position_embedding.is_meta:
            # Small embeddings keep the residual stream near unit scale at initialisation.
            nn.init.normal_(self.token_embedding.weight, std=0.02)
            nn.init.normal_(self.position_embedding, std=0.02)

    @property
    def text_dim(self) -> int:
        return self.config.dim

    @property
    def pooled_dim(self) -> int:
        return self.config.pooled_dim

    @property
    def max_length(self) -> int:
        return self.config.max_length

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> TextEmbeddings:
        """Encode token ids (B, L <= max_length) with mask (B, L), 1 = real token."""
        if (
            input_ids.ndim != 2
            or input_ids.shape != mask.shape
            or input_ids.shape[1] > self.config.max_length
        ):
            raise ValueError(
                f"input_ids {tuple(input_ids.shape)} and mask {tuple(mask.shape)} must be equal (B, L) "
                f"with L <= {self.config.max_length}"
            )
        key_mask = mask.bool()
        x = self.token_embedding(input_ids) + self.position_embedding[: input_ids.shape[1]]
        for block in self.blocks:
            x = block(x, key_mask)
        x = rms_norm(x, self.final_norm, self.config.norm_eps)
        weights = mask.to(x.dtype).unsqueeze(-1)  # (B, L, 1)
        # Padded positions are zeroed so they carry nothing even if a consumer ignores the mask.
        states = x * weights
        pooled = self.pool_proj(states.sum(1) / weights.sum(1).clamp_min(1.0))
        return TextEmbeddings(states, mask.long(), pooled)

    def encode(self, prompts: list[str]) -> TextEmbeddings:
        """Tokenize and encode; keeps autograd (wrap in `torch.no_grad()` for inference)."""
        ids, mask = self.tokenizer.batch_encode(validate_prompts(prompts), self.config.max_length)
        device = self.token_embedding.weight.device
        return self(ids.to(device), mask.to(device))

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        config = {
            **asdict(self.config),
            "vocab_size": self.tokenizer.vocab_size,
            "tokenizer_file": TOKENIZER_FILE,
        }
        save_own_format(directory, self.state_dict(), config, format_name=BUILTIN_FORMAT)
        self.tokenizer.save(directory / TOKENIZER_FILE)
        logger.info("saved built-in text encoder to %s", directory)
        return directory

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | str | None = None,
    ) -> BuiltinTextEncoder:
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"built-in text encoder directory not found: {directory}")
        if not is_own_format(directory, BUILTIN_FORMAT):
            raise CheckpointError(
                f"{directory} is not a built-in text encoder (expected {OWN_CONFIG_NAME} with format "
                f"{BUILTIN_FORMAT!r} and model.safetensors)"
            )
        raw = read_json(directory / OWN_CONFIG_NAME)
        raw.pop(FORMAT_KEY, None)
        vocab_size = raw.pop("vocab_size", None)
        tokenizer_file = directory / str(raw.pop("tokenizer_file", TOKENIZER_FILE))
        if not tokenizer_file.is_file():
            raise CheckpointError(f"built-in text encoder {directory} has no {tokenizer_file.name}")
        tokenizer = WordTokenizer.load(tokenizer_file)
        if vocab_size is not None and vocab_size != tokenizer.vocab_size:
            raise CheckpointError(
                f"{directory}: config says vocab_size {vocab_size}, "
                f"{tokenizer_file.name} has {tokenizer.vocab_size}"
            )
        config = BuiltinTextEncoderConfig.from_dict(raw)
        with torch.device("meta"):
            model = cls(config, tokenizer)
        load_into(model, read_state_dict(directory / "model.safetensors"), f"text encoder {directory}")
        return model.to(device=device, dtype=parse_dtype(dtype))
