"""HunyuanVideo's production text encoder: LLaVA-LLaMA-3-8B hidden states + CLIP-L pooled output.

Numerically this is diffusers' `HunyuanVideoPipeline._get_llama_prompt_embeds` and
`_get_clip_prompt_embeds` (tests/models/test_text_encoder.py checks it bit for bit):

* every prompt is wrapped in the HunyuanVideo prompt template, tokenized to
  `crop_start + max_length` tokens (right padding), run through the LLaMA model, and the hidden
  state after layer `num_layers - hidden_state_skip_layer` is kept (skip 2 -> `hidden_states[-3]`);
  the first `crop_start` positions (BOS + the template's system prompt) are cut from the states
  and the mask, leaving `max_length` positions;
* the raw prompt goes through CLIP-L (77 tokens, no attention mask, as diffusers) and its
  `pooler_output` is the pooled vector.

Weights and tokenizers come from local directories only (`local_files_only=True`); transformers
is imported lazily because it is a development dependency of this project, not a runtime one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from hyv.models.checkpoint_io import parse_dtype, read_json
from hyv.models.text_encoder import TextEmbeddings, validate_prompts

logger = logging.getLogger(__name__)

# diffusers' DEFAULT_PROMPT_TEMPLATE (LLaVA-LLaMA-3 "video" template), copied so that importing
# this module does not need diffusers; a test asserts the two stay identical.
HUNYUAN_PROMPT_TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
    "1. The main content and theme of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
    "4. background environment, light, style and atmosphere."
    "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
)
# Tokens before the prompt with the official LLaMA-3 tokenizer: BOS + 94 template tokens.
HUNYUAN_CROP_START = 95
LLAMA3_START_HEADER_ID = 128006  # "<|start_header_id|>" in the LLaMA-3 vocabulary
CLIP_MAX_LENGTH = 77

# Two prompts whose first characters differ (a letter and a digit), so no template token can be
# shared with a prompt token when comparing their tokenizations.
_CROP_PROBES = ("a", "7")


def compute_crop_start(tokenizer: Any, template: str) -> int:
    """Number of leading tokens that belong to the template, for any prompt.

    Rule: tokenize `template.format(p)` (with the tokenizer's special tokens, e.g. BOS) for two
    probe prompts starting with different characters, and return the length of their common
    token prefix. Those tokens cannot depend on the prompt, so they are the template's; a token
    that straddles template and prompt text is kept (not cropped). With the official LLaMA-3
    tokenizer and template this gives 95, as diffusers' constant; it also agrees with diffusers'
    `crop_start=None` rule (template tokens - 2) whenever `{}` is a single token.
    """
    ids = [tokenizer(template.format(p), add_special_tokens=True)["input_ids"] for p in _CROP_PROBES]
    n = 0
    for a, b in zip(ids[0], ids[1], strict=False):
        if a != b:
            break
        n += 1
    return n


def _require_dir(path: str | Path, what: str) -> Path:
    # Checked before transformers sees the path: given a missing local path, transformers would
    # take it for a hub repo id and report a confusing (or network) error.
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} directory not found: {path}")
    if not (path / "config.json").is_file() and what.endswith("model"):
        raise FileNotFoundError(f"{what} directory {path} has no config.json")
    return path


class HunyuanTextEncoder:
    """LLaVA-LLaMA-3 + CLIP-L text encoder (frozen, inference only)."""

    def __init__(
        self,
        llm_dir: str | Path,
        clip_dir: str | Path,
        *,
        llm_tokenizer_dir: str | Path | None = None,
        clip_tokenizer_dir: str | Path | None = None,
        hidden_state_skip_layer: int = 2,
        max_length: int = 256,
        clip_max_length: int = CLIP_MAX_LENGTH,
        template: str = HUNYUAN_PROMPT_TEMPLATE,
        crop_start: int | None = None,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        llm_path = _require_dir(llm_dir, "LLaMA text encoder model")
        clip_path = _require_dir(clip_dir, "CLIP text encoder model")
        llm_tok_path = _require_dir(llm_tokenizer_dir or llm_path, "LLaMA tokenizer")
        clip_tok_path = _require_dir(clip_tokenizer_dir or clip_path, "CLIP tokenizer")
        if template.count("{}") != 1:
            raise ValueError("prompt template must contain exactly one '{}' placeholder for the prompt")
        if max_length < 1 or clip_max_length < 2:
            raise ValueError(
                f"max_length must be >= 1 and clip_max_length >= 2, got {max_length}, {clip_max_length}"
            )
        model_type = read_json(llm_path / "config.json").get("model_type")
        if model_type == "llava":
            raise ValueError(
                f"{llm_path} holds a full LLaVA model; HunyuanVideo uses only its language model. "
                "Extract it as Tencent's preprocess_text_encoder_tokenizer_utils.py does "
                "(LlavaForConditionalGeneration(...).language_model.save_pretrained) or use the "
                "diffusers layout (hunyuanvideo-community/HunyuanVideo text_encoder/)."
            )

        from transformers import AutoModel, AutoTokenizer, CLIPTextModel

        torch_dtype = parse_dtype(dtype)
        load_dtype: Any = torch_dtype if torch_dtype is not None else "auto"
        logger.info("loading LLaMA text encoder from %s and CLIP from %s", llm_path, clip_path)
        self.llm_tokenizer = AutoTokenizer.from_pretrained(llm_tok_path, local_files_only=True)
        self.clip_tokenizer = AutoTokenizer.from_pretrained(clip_tok_path, local_files_only=True)
        self.llm = AutoModel.from_pretrained(llm_path, local_files_only=True, dtype=load_dtype)
        self.clip = CLIPTextModel.from_pretrained(clip_path, local_files_only=True, dtype=load_dtype)
        for model in (self.llm, self.clip):
            model.eval().requires_grad_(False)
        self.to(device=device)

        if self.llm_tokenizer.padding_side != "right":
            # Cropping the first crop_start positions assumes the template starts every row.
            logger.info(
                "switching the LLaMA tokenizer from %s to right padding", self.llm_tokenizer.padding_side
            )
            self.llm_tokenizer.padding_side = "right"
        if self.llm_tokenizer.pad_token is None:
            logger.warning("LLaMA tokenizer has no pad token; padding with its EOS token")
            self.llm_tokenizer.pad_token = self.llm_tokenizer.eos_token

        num_layers = int(self.llm.config.num_hidden_layers)
        if not 0 <= hidden_state_skip_layer < num_layers:
            raise ValueError(
                f"hidden_state_skip_layer must be in [0, {num_layers}), got {hidden_state_skip_layer}"
            )
        self.hidden_state_skip_layer = hidden_state_skip_layer
        self.template = template
        self.crop_start = self._resolve_crop_start(crop_start)
        self._max_length = max_length
        self.clip_max_length = clip_max_length

    def _resolve_crop_start(self, crop_start: int | None) -> int:
        if crop_start is not None:
            if crop_start < 0:
                raise ValueError(f"crop_start must be >= 0, got {crop_start}")
            return crop_start
        computed = compute_crop_start(self.llm_tokenizer, self.template)
        official = self.template == HUNYUAN_PROMPT_TEMPLATE and (
            self.llm_tokenizer.convert_tokens_to_ids("<|start_header_id|>") == LLAMA3_START_HEADER_ID
        )
        if official:
            # diffusers hard-codes 95 for this pair; keep it so outputs match diffusers exactly.
            if computed != HUNYUAN_CROP_START:
                logger.warning(
                    "crop_start computed as %d, using the official %d", computed, HUNYUAN_CROP_START
                )
            return HUNYUAN_CROP_START
        logger.info("prompt template crop_start computed from the tokenizer: %d", computed)
        return computed

    @property
    def text_dim(self) -> int:
        return int(self.llm.config.hidden_size)

    @property
    def pooled_dim(self) -> int:
        return int(self.clip.config.hidden_size)

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def device(self) -> torch.device:
        return next(self.llm.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.llm.parameters()).dtype

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> HunyuanTextEncoder:
        kwargs: dict[str, Any] = {}
        if device is not None:
            kwargs["device"] = device
        if dtype is not None:
            kwargs["dtype"] = dtype
        if kwargs:
            self.llm.to(**kwargs)
            self.clip.to(**kwargs)
        return self

    def _warn_truncated(self, tokenizer: Any, texts: list[str], limit: int, what: str) -> None:
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]
        over = [i for i, n in enumerate(lengths) if n > limit]
        if over:
            logger.warning(
                "%s: prompts %s exceed %d tokens and were truncated (lengths %s)",
                what,
                over[:8],
                limit,
                [lengths[i] for i in over[:8]],
            )

    @torch.no_grad()
    def encode_llm(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(states (B, max_length, D), mask (B, max_length) int64), as `_get_llama_prompt_embeds`."""
        texts = [self.template.format(p) for p in validate_prompts(prompts)]
        total = self.crop_start + self._max_length
        self._warn_truncated(self.llm_tokenizer, texts, total, "LLaMA text encoder")
        inputs = self.llm_tokenizer(
            texts,
            max_length=total,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
            return_attention_mask=True,
        )
        input_ids = inputs["input_ids"].to(self.device)
        mask = inputs["attention_mask"].to(self.device)
        outputs = self.llm(
            input_ids=input_ids, attention_mask=mask, output_hidden_states=True, use_cache=False
        )
        states = outputs.hidden_states[-(self.hidden_state_skip_layer + 1)]
        if self.crop_start > 0:
            states = states[:, self.crop_start :]
            mask = mask[:, self.crop_start :]
        return states, mask.long()

    @torch.no_grad()
    def encode_clip(self, prompts: list[str]) -> torch.Tensor:
        """Pooled (B, clip hidden size), as `_get_clip_prompt_embeds`."""
        prompts = validate_prompts(prompts)
        self._warn_truncated(self.clip_tokenizer, prompts, self.clip_max_length, "CLIP text encoder")
        inputs = self.clip_tokenizer(
            prompts,
            padding="max_length",
            max_length=self.clip_max_length,
            truncation=True,
            return_tensors="pt",
        )
        # No attention mask, as diffusers: CLIP's causal mask already hides the padding from the
        # EOS position that pooler_output reads.
        device = next(self.clip.parameters()).device
        return self.clip(inputs["input_ids"].to(device), output_hidden_states=False).pooler_output

    def encode(self, prompts: list[str]) -> TextEmbeddings:
        prompts = validate_prompts(prompts)
        states, mask = self.encode_llm(prompts)
        pooled = self.encode_clip(prompts)
        return TextEmbeddings(states, mask, pooled)

    def __repr__(self) -> str:
        return (
            f"HunyuanTextEncoder(text_dim={self.text_dim}, pooled_dim={self.pooled_dim}, "
            f"max_length={self.max_length}, crop_start={self.crop_start}, "
            f"skip={self.hidden_state_skip_layer})"
        )
