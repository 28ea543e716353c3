"""Text encoders: diffusers parity of the HunyuanVideo backend, the built-in encoder, the factory."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from hyv.models import (
    BuiltinTextEncoder,
    BuiltinTextEncoderConfig,
    HunyuanTextEncoder,
    TextEmbeddings,
    TextEncoder,
    WordTokenizer,
    default_caption_vocabulary,
    load_text_encoder,
)
from hyv.models.checkpoint_io import CheckpointError
from hyv.models.text_encoder_builtin import (
    CAPTION_BACKGROUNDS,
    CAPTION_COLORS,
    CAPTION_MOTIONS,
    CAPTION_SHAPES,
)
from hyv.models.text_encoder_hf import HUNYUAN_CROP_START, HUNYUAN_PROMPT_TEMPLATE, compute_crop_start
from tests.models.hf_fixtures import SAMPLE_PROMPTS, TinyHunyuanTextStack, save_tiny_hunyuan_text_stack

CPU = torch.device("cpu")
# Mixed lengths, an empty (negative) prompt and characters outside the BPE training text.
PROMPTS = [*SAMPLE_PROMPTS, "", "Ünïcode & {braces} 123"]


# --------------------------------------------------------------------------- HunyuanVideo backend


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> TinyHunyuanTextStack:
    return save_tiny_hunyuan_text_stack(tmp_path_factory.mktemp("hyv_text"))


@pytest.fixture(scope="module")
def encoder(stack: TinyHunyuanTextStack) -> HunyuanTextEncoder:
    return HunyuanTextEncoder(
        stack.llm_dir,
        stack.clip_dir,
        llm_tokenizer_dir=stack.llm_tokenizer_dir,
        clip_tokenizer_dir=stack.clip_tokenizer_dir,
    )


@pytest.fixture(scope="module")
def pipe(stack: TinyHunyuanTextStack):
    diffusers = pytest.importorskip("diffusers")
    # Only the text-encoding methods are used; the constructor accepts None for the rest.
    return diffusers.HunyuanVideoPipeline(
        text_encoder=stack.llama,
        tokenizer=stack.llama_tokenizer,
        transformer=None,
        vae=None,
        scheduler=None,
        text_encoder_2=stack.clip,
        tokenizer_2=stack.clip_tokenizer,
    )


def test_template_is_diffusers_default() -> None:
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    assert DEFAULT_PROMPT_TEMPLATE["template"] == HUNYUAN_PROMPT_TEMPLATE
    assert HUNYUAN_CROP_START == DEFAULT_PROMPT_TEMPLATE["crop_start"] == 95


def test_crop_start_rule_matches_diffusers(
    stack: TinyHunyuanTextStack, encoder: HunyuanTextEncoder, pipe
) -> None:
    # The fixture tokenizer splits like LLaMA-3 and knows every template word, so the template is
    # 95 tokens as with the real one; diffusers' own crop_start=None rule must agree with ours.
    assert encoder.crop_start == compute_crop_start(stack.llama_tokenizer, HUNYUAN_PROMPT_TEMPLATE) == 95
    template = {"template": HUNYUAN_PROMPT_TEMPLATE, "crop_start": None}
    by_rule, _ = pipe._get_llama_prompt_embeds(PROMPTS, template, device=CPU)
    by_value, _ = pipe._get_llama_prompt_embeds(PROMPTS, {**template, "crop_start": 95}, device=CPU)
    assert torch.equal(by_rule, by_value)


def test_crop_start_keeps_a_token_shared_by_template_and_prompt() -> None:
    class CharTokenizer:  # each character a token, except "xa" which merges across the boundary
        def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
            ids, i = [0], 0
            while i < len(text):
                if text.startswith("xa", i):
                    ids.append(1000)
                    i += 2
                else:
                    ids.append(ord(text[i]))
                    i += 1
            return {"input_ids": ids}

    assert compute_crop_start(CharTokenizer(), "sys: {} end") == 1 + 5
    assert compute_crop_start(CharTokenizer(), "sys x{} end") == 1 + 4  # "x" may fuse with the prompt


@pytest.mark.parametrize("max_length", [256, 12])
def test_parity_with_diffusers(encoder: HunyuanTextEncoder, pipe, max_length: int) -> None:
    encoder._max_length = max_length  # 12 truncates the long prompts, as diffusers does
    try:
        states, mask, pooled = encoder.encode(PROMPTS)
    finally:
        encoder._max_length = 256
    template = {"template": HUNYUAN_PROMPT_TEMPLATE, "crop_start": encoder.crop_start}
    ref_states, ref_mask = pipe._get_llama_prompt_embeds(
        PROMPTS, template, device=CPU, max_sequence_length=max_length, num_hidden_layers_to_skip=2
    )
    ref_pooled = pipe._get_clip_prompt_embeds(PROMPTS, device=CPU, max_sequence_length=77)
    assert states.shape == (len(PROMPTS), max_length, encoder.text_dim)
    assert pooled.shape == (len(PROMPTS), encoder.pooled_dim)
    assert (states - ref_states).abs().max().item() <= 1e-6
    assert (pooled - ref_pooled).abs().max().item() <= 1e-6
    assert torch.equal(mask, ref_mask)
    assert not states.requires_grad and not pooled.requires_grad


def test_masks_follow_prompt_lengths(stack: TinyHunyuanTextStack, encoder: HunyuanTextEncoder) -> None:
    emb = encoder.encode(PROMPTS)
    assert emb.mask.dtype == torch.int64
    tok = stack.llama_tokenizer
    for row, prompt in enumerate(PROMPTS):
        n_prompt = len(tok(prompt, add_special_tokens=False).input_ids)
        # The prompt's tokens plus the closing <|eot_id|>, then padding only.
        assert emb.mask[row].sum().item() == n_prompt + 1
        assert emb.mask[row, : n_prompt + 1].all() and not emb.mask[row, n_prompt + 1 :].any()
    lengths = emb.mask.sum(1).tolist()
    assert len(set(lengths)) > 2


def test_hunyuan_encoder_properties_and_prompt_validation(encoder: HunyuanTextEncoder) -> None:
    assert isinstance(encoder, TextEncoder)
    assert (encoder.text_dim, encoder.pooled_dim, encoder.max_length) == (32, 24, 256)
    for bad in ([], [1], "a prompt", ["ok", None]):
        with pytest.raises(ValueError):
            encoder.encode(bad)  # type: ignore[arg-type]
    assert encoder.to(device="cpu", dtype=torch.float32) is encoder


def test_official_layout_and_dispatch(tmp_path: Path, encoder: HunyuanTextEncoder) -> None:
    official = save_tiny_hunyuan_text_stack(tmp_path / "official", official_layout=True)
    loaded = load_text_encoder(official.root)
    assert isinstance(loaded, HunyuanTextEncoder)
    assert loaded.crop_start == encoder.crop_start
    a, b = loaded.encode(PROMPTS[:2]), encoder.encode(PROMPTS[:2])  # same seeds, same weights
    assert torch.equal(a.states, b.states) and torch.equal(a.pooled, b.pooled)


def test_diffusers_layout_dispatch(stack: TinyHunyuanTextStack) -> None:
    loaded = load_text_encoder(stack.root, max_length=8, crop_start=95)
    assert isinstance(loaded, HunyuanTextEncoder) and loaded.max_length == 8


def test_missing_directories_name_the_path(tmp_path: Path, stack: TinyHunyuanTextStack, monkeypatch) -> None:
    import transformers

    def never(*args, **kwargs):
        raise AssertionError("transformers must not be reached for a missing directory")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", never)
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", never)
    missing = tmp_path / "no_such_llm"
    with pytest.raises(FileNotFoundError, match="no_such_llm"):
        HunyuanTextEncoder(missing, stack.clip_dir)
    with pytest.raises(FileNotFoundError, match="no_such_clip"):
        HunyuanTextEncoder(stack.llm_dir, tmp_path / "no_such_clip")
    with pytest.raises(FileNotFoundError, match="no_such_tok"):
        HunyuanTextEncoder(stack.llm_dir, stack.clip_dir, llm_tokenizer_dir=tmp_path / "no_such_tok")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_text_encoder(tmp_path / "nowhere")


def test_unrecognised_directory_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "text_encoder").mkdir()  # half a HunyuanVideo layout
    with pytest.raises(ValueError, match=r"text_encoder_2/") as info:
        load_text_encoder(tmp_path)
    assert str(tmp_path) in str(info.value)
    with pytest.raises(ValueError, match="unknown text encoder preset"):
        load_text_encoder("builtin:huge")


# --------------------------------------------------------------------------- built-in backend


def _tiny(seed: int = 0) -> BuiltinTextEncoder:
    torch.manual_seed(seed)
    return BuiltinTextEncoder(
        BuiltinTextEncoderConfig.preset("tiny"), WordTokenizer(default_caption_vocabulary())
    )


def test_caption_grammar_is_in_vocabulary() -> None:
    tok = WordTokenizer(default_caption_vocabulary())
    for color in CAPTION_COLORS:
        for shape in CAPTION_SHAPES:
            for motion in CAPTION_MOTIONS:
                for background in CAPTION_BACKGROUNDS:
                    tok.encode(f"a {color} {shape} {motion} on a {background} background")
    assert not tok.unknown_counts
    assert {"camera", "zoom", "pan", "two", "and", "the"} <= set(tok.words)
    assert len(set(default_caption_vocabulary())) == len(default_caption_vocabulary())


def test_word_tokenizer_encoding() -> None:
    tok = WordTokenizer(["a", "red", "circle"])
    ids, mask = tok.batch_encode(["A red, CIRCLE!", "a"], max_length=8)
    red, circle = tok.token_to_id["red"], tok.token_to_id["circle"]
    assert ids[0].tolist() == [tok.bos_id, tok.token_to_id["a"], red, circle, tok.eos_id, 0, 0, 0]
    assert mask.sum(1).tolist() == [5, 3]
    with pytest.raises(ValueError):
        WordTokenizer(["two words"])


def test_builtin_shapes_and_determinism() -> None:
    enc = _tiny().eval()
    assert isinstance(enc, TextEncoder)
    prompts = ["a red circle moving left on a black background", "a blue square growing"]
    emb = enc.encode(prompts)
    assert isinstance(emb, TextEmbeddings)
    states, mask, pooled = emb
    assert states.shape == (2, 32, 32) and mask.shape == (2, 32) and pooled.shape == (2, 16)
    assert mask.dtype == torch.int64 and mask.sum(1).tolist() == [11, 6]
    assert (enc.text_dim, enc.pooled_dim, enc.max_length) == (32, 16, 32)
    assert torch.equal(states[mask == 0], torch.zeros_like(states[mask == 0]))
    again = enc.encode(prompts)
    assert torch.equal(again.states, states) and torch.equal(again.pooled, pooled)
    other = _tiny().eval().encode(prompts)
    assert torch.equal(other.states, states)


def test_builtin_padding_invariance() -> None:
    enc = _tiny().eval()
    short = "a red circle"
    alone = enc.encode([short])
    batched = enc.encode(
        [short, "two large yellow triangles moving right on a gray background with the camera"]
    )
    n = int(alone.mask[0].sum())
    torch.testing.assert_close(batched.states[0, :n], alone.states[0, :n], rtol=0, atol=1e-6)
    torch.testing.assert_close(batched.pooled[0], alone.pooled[0], rtol=0, atol=1e-6)
    # Whatever sits in padded positions must not leak into real tokens.
    ids, mask = enc.tokenizer.batch_encode([short], enc.max_length)
    noisy = torch.where(mask.bool(), ids, torch.randint(4, enc.tokenizer.vocab_size, ids.shape))
    out = enc(noisy, mask)
    torch.testing.assert_close(out.states, alone.states, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.pooled, alone.pooled, rtol=0, atol=1e-6)


def test_builtin_unknown_words_and_truncation(caplog: pytest.LogCaptureFixture) -> None:
    enc = _tiny()
    with caplog.at_level(logging.DEBUG, logger="hyv.models.text_encoder_builtin"):
        emb = enc.encode(["a purple dodecahedron"])
    assert enc.tokenizer.unknown_counts == {"purple": 1, "dodecahedron": 1}
    ids, _ = enc.tokenizer.batch_encode(["a purple dodecahedron"], enc.max_length)
    assert ids[0, 2:4].tolist() == [WordTokenizer.unk_id] * 2
    assert any("unknown" in r.message and r.levelno == logging.DEBUG for r in caplog.records)
    assert emb.mask.sum().item() == 5
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hyv.models.text_encoder_builtin"):
        long = enc.encode([" ".join(["red"] * 50)])
    assert long.mask.sum().item() == enc.max_length
    assert any("truncated" in r.message for r in caplog.records)


def test_builtin_prompt_validation() -> None:
    enc = _tiny()
    for bad in ([], [3], "a red circle", ("ok", b"bytes")):
        with pytest.raises(ValueError):
            enc.encode(bad)  # type: ignore[arg-type]


def test_builtin_save_load_round_trip(tmp_path: Path) -> None:
    enc = _tiny(seed=3).eval()
    enc.save_pretrained(tmp_path / "te")
    assert {p.name for p in (tmp_path / "te").iterdir()} == {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    }
    loaded = load_text_encoder(tmp_path / "te")
    assert isinstance(loaded, BuiltinTextEncoder)
    assert loaded.config == enc.config and loaded.tokenizer.words == enc.tokenizer.words
    prompts = ["a green square shrinking on a black background", "zoom in"]
    a, b = enc.encode(prompts), loaded.eval().encode(prompts)
    assert torch.equal(a.states, b.states) and torch.equal(a.pooled, b.pooled) and torch.equal(a.mask, b.mask)
    assert all(p.requires_grad for p in loaded.parameters())


def test_builtin_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent"):
        BuiltinTextEncoder.from_pretrained(tmp_path / "absent")
    enc = _tiny()
    enc.save_pretrained(tmp_path / "te")
    (tmp_path / "te" / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"tokenizer\.json"):
        BuiltinTextEncoder.from_pretrained(tmp_path / "te")


def test_builtin_gradients_flow() -> None:
    enc = _tiny().train()
    states, _mask, pooled = enc.encode(["a red circle moving up", "a white triangle"])
    (states.pow(2).mean() + pooled.pow(2).mean()).backward()
    for name, param in enc.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name


def test_builtin_dtype_and_device_moves() -> None:
    enc = load_text_encoder("builtin:tiny", dtype="bf16")
    assert isinstance(enc, BuiltinTextEncoder)
    emb = enc.encode(["a cyan circle"])
    assert emb.states.dtype == torch.bfloat16 and emb.mask.dtype == torch.int64
    moved = emb.to(dtype=torch.float32)
    assert moved.states.dtype == torch.float32 and moved.mask.dtype == torch.int64
    small = BuiltinTextEncoderConfig.preset("small")
    assert (small.dim, small.pooled_dim, small.max_length) == (128, 128, 32) and 2 <= small.num_layers <= 4
