"""The torch-free prompt check (hyv.engine.prompt_vocabulary) against the real tokenizer: the same
words, the same files, the grammar saved with the tokenizer, and no torch import on the way."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from hyv.engine import prompt_vocabulary as pv
from hyv.engine.bundle_spec import DEFAULT_BUNDLE_DIR
from hyv.engine.prompt_vocabulary import (
    CAPTION_TEMPLATE,
    CaptionGrammar,
    OffVocabularyError,
    PromptVocabulary,
    bundle_prompt_vocabulary,
    caption_grammar,
    prompt_words,
    read_prompt_vocabulary,
)
from hyv.models import checkpoint_io, text_encoder, text_encoder_builtin
from hyv.models.text_encoder_builtin import (
    BuiltinTextEncoder,
    BuiltinTextEncoderConfig,
    WordTokenizer,
    default_caption_vocabulary,
)
from hyv.training.data.grammar import all_combinations, caption

VOCABULARY = PromptVocabulary(
    frozenset(default_caption_vocabulary()), caption_grammar(default_caption_vocabulary())
)


def test_the_saved_formats_are_the_models_own() -> None:
    assert pv.FORMAT_KEY == checkpoint_io.FORMAT_KEY
    assert pv.BUILTIN_FORMAT == text_encoder.BUILTIN_FORMAT
    assert pv.TOKENIZER_FILE == text_encoder_builtin.TOKENIZER_FILE
    assert pv.TOKENIZER_FORMAT == text_encoder_builtin.TOKENIZER_FORMAT
    assert pv.WORD_RE.pattern == text_encoder_builtin._WORD_RE.pattern


def test_the_grammar_is_the_models_own() -> None:
    """The torch-free copy of the caption grammar, and the one the tokenizer saves, are the model's."""
    assert pv.CAPTION_TEMPLATE == text_encoder_builtin.CAPTION_TEMPLATE
    assert pv.CAPTION_SLOTS == text_encoder_builtin.CAPTION_SLOTS
    assert pv.CAPTION_SLOTS == {
        "color": text_encoder_builtin.CAPTION_COLORS,
        "shape": text_encoder_builtin.CAPTION_SHAPES,
        "motion": text_encoder_builtin.CAPTION_MOTIONS,
        "background": text_encoder_builtin.CAPTION_BACKGROUNDS,
    }
    for words in (
        default_caption_vocabulary(),
        ["a", "on", "background", "red", "circle", "growing", "gray"],
    ):
        saved = text_encoder_builtin.caption_grammar(words)
        derived = caption_grammar(words)
        assert saved is not None and derived is not None
        assert CaptionGrammar.from_dict(saved) == derived
    assert (
        text_encoder_builtin.caption_grammar(["a", "red"]) is None and caption_grammar(["a", "red"]) is None
    )


def test_ascii_words_are_exactly_the_tokenizers() -> None:
    """For ASCII text the check reads the words the tokenizer encodes: punctuation, digits, case."""
    rng = random.Random(0)
    alphabet = "abcXYZ019 -_.,;:!?'\"()[]{}<>/\\|@#$%^&*+=~`\t\n"
    tokenizer = WordTokenizer(default_caption_vocabulary())
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert prompt_words(text) == tokenizer.split(text), repr(text)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("一只猫在弹钢琴", ["一只猫在弹钢琴"]),  # dropped whole by the tokenizer
        ("Café, crème", ["café", "crème"]),  # cut to "caf", "cr", "me" by the tokenizer
        ("a red\u3000circle。", ["a", "red", "circle"]),  # ideographic space and full stop separate
        ("red\u200bcircle", ["red", "circle"]),  # a zero-width space separates (format character)
        ("a 🐱 b", ["a", "🐱", "b"]),  # a symbol is a word to name
        ("“a red circle” — moving left…", ["a", "red", "circle", "moving", "left"]),
    ],
)
def test_other_scripts_stay_whole_words(text: str, words: list[str]) -> None:
    assert prompt_words(text) == words


def test_every_grammar_caption_passes() -> None:
    captions = [caption(a) for a in all_combinations()]
    assert len(captions) == 294
    for text in captions:
        VOCABULARY.check(text)
        VOCABULARY.check(text.upper() + "!")


def test_the_error_names_each_unknown_word_once_in_order() -> None:
    with pytest.raises(OffVocabularyError) as caught:
        VOCABULARY.check("A cat, a CAT: playing the piano", "prompt")
    assert str(caught.value) == "prompt: words outside this model's vocabulary: 'cat', 'playing', 'piano'"
    assert caught.value.unknown == ["cat", "playing", "piano"] and caught.value.param == "prompt"
    many = " ".join(f"w{i}x" for i in range(25))
    with pytest.raises(OffVocabularyError, match=r"'w19x' and 5 more$"):
        VOCABULARY.check(many)
    with pytest.raises(OffVocabularyError, match=r"^prompt: no words in '\.\.\.'"):
        VOCABULARY.check("...")
    VOCABULARY.check("...", "negative_prompt", allow_empty=True)


def test_the_grammar_is_saved_with_the_tokenizer(tmp_path: Path) -> None:
    encoder = BuiltinTextEncoder(
        BuiltinTextEncoderConfig.preset("tiny"), WordTokenizer(default_caption_vocabulary())
    )
    encoder.save_pretrained(tmp_path / "te")
    saved = json.loads((tmp_path / "te" / "tokenizer.json").read_text())
    assert saved["grammar"]["template"] == CAPTION_TEMPLATE
    assert saved["grammar"]["slots"]["shape"] == ["circle", "square", "triangle"]
    assert WordTokenizer.load(tmp_path / "te" / "tokenizer.json").words == default_caption_vocabulary()

    vocabulary = read_prompt_vocabulary(tmp_path / "te")
    assert vocabulary is not None
    assert vocabulary.words == frozenset(default_caption_vocabulary())
    assert vocabulary.grammar == CaptionGrammar.from_dict(saved["grammar"])
    # A grammar saved by another version wins over the one this code would derive.
    saved["grammar"]["slots"]["color"] = ["red"]
    (tmp_path / "te" / "tokenizer.json").write_text(json.dumps(saved))
    reread = read_prompt_vocabulary(tmp_path / "te")
    assert reread is not None and reread.grammar is not None and reread.grammar.slots["color"] == ("red",)


def test_a_tokenizer_of_other_words_has_no_grammar(tmp_path: Path) -> None:
    assert caption_grammar(["a", "red", "circle"]) is None  # no "on", "background"
    assert caption_grammar([*default_caption_vocabulary()][:3]) is None  # no colors at all
    encoder = BuiltinTextEncoder(BuiltinTextEncoderConfig.preset("tiny"), WordTokenizer(["hello", "world"]))
    encoder.save_pretrained(tmp_path / "te")
    assert "grammar" not in json.loads((tmp_path / "te" / "tokenizer.json").read_text())
    vocabulary = read_prompt_vocabulary(tmp_path / "te")
    assert vocabulary is not None and vocabulary.grammar is None
    assert vocabulary.unknown_words("hello red world") == ["red"]


def test_only_the_builtin_encoder_has_a_vocabulary(tmp_path: Path) -> None:
    assert read_prompt_vocabulary(tmp_path / "missing") is None
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 16}))
    assert read_prompt_vocabulary(hf) is None
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({pv.FORMAT_KEY: pv.BUILTIN_FORMAT}))
    with pytest.raises(ValueError, match=r"cannot read the tokenizer .*broken/tokenizer\.json"):
        read_prompt_vocabulary(broken)
    (broken / "tokenizer.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="is not a hyv-word-tokenizer file"):
        read_prompt_vocabulary(broken)


def test_the_bundled_model_and_an_external_encoder(tmp_path: Path) -> None:
    shipped = bundle_prompt_vocabulary(DEFAULT_BUNDLE_DIR)
    assert shipped is not None and shipped.grammar is not None
    assert shipped.grammar.template == CAPTION_TEMPLATE
    assert shipped.unknown_words("a cat playing piano") == ["cat", "playing", "piano"]
    # --text-encoder / HYV_TEXT_ENCODER replaces the bundle's own: its vocabulary (or none) counts.
    assert bundle_prompt_vocabulary(DEFAULT_BUNDLE_DIR, tmp_path) is None


def test_the_check_imports_no_torch() -> None:
    code = (
        "import sys, pathlib\n"
        "from hyv.engine.prompt_vocabulary import bundle_prompt_vocabulary\n"
        "from hyv.service.api.validation import ServedModel\n"
        "from hyv.engine.bundle_spec import DEFAULT_BUNDLE_DIR\n"
        "model = ServedModel.from_bundle('hyv-small', DEFAULT_BUNDLE_DIR)\n"
        "assert model.vocabulary is not None and model.public().grammar is not None\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
