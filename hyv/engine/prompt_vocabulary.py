"""Which prompts a model with the built-in word-level text encoder can follow, read without torch.

The bundled model's text encoder (hyv.models.text_encoder_builtin) knows a fixed list of words and
maps every other word to `<unk>`: "a cat playing piano" or a Chinese prompt encodes to little more
than padding and the model draws noise. So the API, the CLI and the web page refuse a prompt with
words outside the vocabulary, naming them, and show the caption grammar the model was trained on.

Everything here reads the bundle's files directly (text_encoder/config.json, tokenizer.json): the
API process never imports torch, and importing anything under hyv.models would (its __init__ does).
Models with another text encoder (LLaVA-LLaMA-3 + CLIP) have no vocabulary here: any text goes.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The caption grammar the bundled model is trained on. The same values as
# hyv.models.text_encoder_builtin's (the layer below, which cannot be imported without torch), and
# the same saved formats as hyv.models' own: tests/engine/test_prompt_vocabulary.py checks both.
CAPTION_TEMPLATE = "a {color} {shape} {motion} on a {background} background"
CAPTION_SLOTS: dict[str, tuple[str, ...]] = {
    "color": ("red", "green", "blue", "yellow", "cyan", "magenta", "white"),
    "shape": ("circle", "square", "triangle"),
    "motion": (
        "moving left",
        "moving right",
        "moving up",
        "moving down",
        "growing",
        "shrinking",
        "standing still",
    ),
    "background": ("black", "gray"),
}
FORMAT_KEY = "_hyv_format"
BUILTIN_FORMAT = "hyv-text-encoder"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_FORMAT = "hyv-word-tokenizer"
TEXT_ENCODER_DIR = "text_encoder"  # a bundle's built-in text encoder (hyv.engine.bundle)

# What the tokenizer keeps: lowercase ASCII letters and digits; every other character separates.
WORD_RE = re.compile(r"[a-z0-9]+")
MAX_NAMED_WORDS = 20


def _separates(char: str) -> bool:
    """Whitespace, punctuation (any script), control characters and ASCII symbols: dropped between
    words by the tokenizer and meaning nothing to a reader either."""
    if char.isascii():
        return not char.isalnum()
    return unicodedata.category(char)[0] in "PZC"


def prompt_words(text: str) -> list[str]:
    """The words of `text` as a reader sees them, lowercased.

    For ASCII text these are exactly the tokenizer's words (`WordTokenizer.split`: runs of
    [a-z0-9] after lowercasing). The tokenizer silently drops every other character, so a word in
    another script ("猫", "café") would vanish or be cut ("caf"); here it stays one whole word, so
    it can be named as unknown. Punctuation of any script still separates words.
    """
    words: list[str] = []
    current: list[str] = []
    for char in text.lower():
        if _separates(char):
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(char)
    if current:
        words.append("".join(current))
    return words


@dataclass(frozen=True)
class CaptionGrammar:
    """A caption template ('a {color} ...') and the values each slot takes."""

    template: str
    slots: dict[str, tuple[str, ...]]

    def __post_init__(self) -> None:
        named = re.findall(r"\{(\w+)\}", self.template)
        if sorted(named) != sorted(self.slots) or any(not values for values in self.slots.values()):
            raise ValueError(
                f"grammar template {self.template!r} names slots {named}, but values are given for "
                f"{sorted(self.slots)} (every slot needs at least one value)"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CaptionGrammar:
        template, slots = data.get("template"), data.get("slots")
        if not isinstance(template, str) or not isinstance(slots, dict):
            raise ValueError(f"a grammar needs 'template' (text) and 'slots' (an object), got {dict(data)}")
        return cls(template, {str(k): tuple(str(v) for v in values) for k, values in slots.items()})

    def to_dict(self) -> dict[str, Any]:
        return {"template": self.template, "slots": {k: list(v) for k, v in self.slots.items()}}

    def example(self) -> str:
        return self.template.format(**{slot: values[0] for slot, values in self.slots.items()})

    def describe(self) -> str:
        """One line: the template, then each slot's values."""
        slots = "; ".join(f"{slot}: {', '.join(values)}" for slot, values in self.slots.items())
        return f"'{self.template}' with {slots}"


def caption_grammar(vocabulary: Iterable[str]) -> CaptionGrammar | None:
    """The caption grammar as far as a vocabulary covers it: each slot keeps the values whose words
    are all known. None when the template's own words or a whole slot are missing (a tokenizer not
    made for these captions). The fallback for a tokenizer.json saved without its grammar."""
    known = set(vocabulary)
    template_words = set(WORD_RE.findall(re.sub(r"\{\w+\}", " ", CAPTION_TEMPLATE)))
    if not template_words <= known:
        return None
    slots = {
        slot: tuple(v for v in values if set(prompt_words(v)) <= known)
        for slot, values in CAPTION_SLOTS.items()
    }
    if not all(slots.values()):
        return None
    return CaptionGrammar(CAPTION_TEMPLATE, slots)


class OffVocabularyError(ValueError):
    """A prompt with words the model's text encoder does not know (or with no words at all)."""

    def __init__(self, param: str, unknown: list[str], text: str) -> None:
        self.param = param
        self.unknown = unknown
        if unknown:
            named = ", ".join(repr(word) for word in unknown[:MAX_NAMED_WORDS])
            more = f" and {len(unknown) - MAX_NAMED_WORDS} more" if len(unknown) > MAX_NAMED_WORDS else ""
            message = f"{param}: words outside this model's vocabulary: {named}{more}"
        else:
            shown = text if len(text) <= 40 else text[:37] + "..."
            message = f"{param}: no words in {shown!r}; this model reads English words of its vocabulary"
        super().__init__(message)


@dataclass(frozen=True)
class PromptVocabulary:
    """The words a built-in text encoder knows, and the grammar its model was trained on."""

    words: frozenset[str]
    grammar: CaptionGrammar | None = None

    def sorted_words(self) -> list[str]:
        return sorted(self.words)

    def unknown_words(self, text: str) -> list[str]:
        """The words of `text` outside the vocabulary, each once, in order of appearance."""
        return list(dict.fromkeys(w for w in prompt_words(text) if w not in self.words))

    def check(self, text: str, param: str = "prompt", allow_empty: bool = False) -> None:
        """OffVocabularyError naming the unknown words; a text with no words at all too, unless
        `allow_empty` (a negative prompt may be empty)."""
        unknown = self.unknown_words(text)
        if unknown or (not allow_empty and not prompt_words(text)):
            raise OffVocabularyError(param, unknown, text)

    @classmethod
    def from_tokenizer_file(cls, path: Path) -> PromptVocabulary:
        """Read a `WordTokenizer.save` file; ValueError names the file and what is wrong with it."""
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read the tokenizer {path}: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != TOKENIZER_FORMAT:
            raise ValueError(f"{path} is not a {TOKENIZER_FORMAT} file")
        words = data.get("words")
        if not isinstance(words, list):
            raise ValueError(f"{path} has no word list ('words')")
        vocabulary = [str(w).lower() for w in words]
        saved = data.get("grammar")
        grammar = CaptionGrammar.from_dict(saved) if isinstance(saved, dict) else caption_grammar(vocabulary)
        return cls(frozenset(vocabulary), grammar)


def read_prompt_vocabulary(text_encoder_dir: Path) -> PromptVocabulary | None:
    """The vocabulary of the text encoder saved in `text_encoder_dir` when it is the built-in one
    (config.json with the built-in format tag); None for any other encoder, or no directory.
    ValueError when it is a built-in encoder whose tokenizer cannot be read."""
    config_path = text_encoder_dir / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or config.get(FORMAT_KEY) != BUILTIN_FORMAT:
        return None
    return PromptVocabulary.from_tokenizer_file(
        text_encoder_dir / str(config.get("tokenizer_file", TOKENIZER_FILE))
    )


def bundle_prompt_vocabulary(weights: Path, text_encoder: Path | None = None) -> PromptVocabulary | None:
    """The vocabulary of the text encoder a bundle serves with: `text_encoder` when one is given
    (as `hyv generate --text-encoder` and HYV_TEXT_ENCODER give it), else the bundle's own
    text_encoder/. None: not the built-in encoder, so any text is accepted."""
    return read_prompt_vocabulary(text_encoder if text_encoder is not None else weights / TEXT_ENCODER_DIR)
