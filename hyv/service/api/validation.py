"""From a `VideoCreate` body to a fully resolved generation plan, or a 422 naming the problem.

The served model's limits come from its bundle (bundle.json, and the DiT's config for image
conditioning and a distilled schedule), read once at start without loading any weights; the same
`hyv.engine.limits.resolve` the worker runs decides, so whatever the API accepts the worker can run.
A model with the built-in word-level text encoder also refuses prompts with words outside its
vocabulary (hyv.engine.prompt_vocabulary): it could only draw noise for them.

OpenAI's `size` and `seconds` are mapped onto what the model renders, as the OpenAI SDK sends them
("1280x720", "8") whatever the model: a size on a model with resolution buckets becomes the bucket
of the nearest aspect ratio (then the nearest area), refused only when no bucket's aspect ratio is
within a factor of MAX_ASPECT_MISMATCH of it; `seconds` become the model's frame count (one of its
`frame_counts`, else any 4n+1 up to max_frames) whose duration is nearest, never a single frame.
The video object's `size` and `seconds` then say what is rendered, and `requested_size` /
`requested_seconds` what was asked. An explicit `num_frames` is taken as it is (or refused).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from hyv.engine.bundle_spec import BUNDLE_FILE, GUIDANCE_MODE_METADATA_KEY, read_bundle_spec
from hyv.engine.image_cond import load_image
from hyv.engine.limits import GenerationPlan, ModelLimits, resolve
from hyv.engine.lora_folder import LORA_SUFFIX, check_lora_header, lora_names
from hyv.engine.prompt_vocabulary import OffVocabularyError, PromptVocabulary, bundle_prompt_vocabulary
from hyv.engine.release import find_release
from hyv.engine.request import GenerationRequest, LoraChoice
from hyv.service.api.errors import InvalidRequestError, TooLargeError, validation_message
from hyv.service.api.schemas import (
    CaptionGrammarPublic,
    GuidanceMode,
    ImageReference,
    ModelPublic,
    VideoCreate,
)

logger = logging.getLogger(__name__)

SIZE_PATTERN = re.compile(r"^\s*(\d{1,5})\s*[xX×]\s*(\d{1,5})\s*$")
DATA_URL_PATTERN = re.compile(r"^data:(image/[\w.+-]+)?(;[\w=-]+)*;base64,(.*)$", re.DOTALL)
SCHEDULE_METADATA_KEY = "sampling_sigmas"
MAX_SIZE_SIDE = 4096  # GenerationRequest's bound on width and height
MAX_ASPECT_MISMATCH = 2.0  # a requested aspect ratio at most this factor from its bucket's is snapped
MAX_SECONDS = 3600


@dataclass(frozen=True)
class ServedModel:
    """What the API needs to know about the model the workers serve (no weights loaded)."""

    name: str
    limits: ModelLimits = field(default_factory=ModelLimits)
    fixed_steps: int | None = None
    supports_image: bool = True
    created: int = 0
    vocabulary: PromptVocabulary | None = None  # the built-in text encoder's; None = any text
    lora_folder: Path | None = None  # the LoRA adapters requests may name (HYV_LORA_DIR)
    # "embedded" (one forward per step, guidance-distilled) or "true_cfg" (two); None = not known
    guidance_mode: GuidanceMode | None = None

    @classmethod
    def from_bundle(cls, name: str, weights: Path, text_encoder: Path | None = None) -> ServedModel:
        """Read the bundle's limits; without a bundle, the engine's default limits (logged).
        `text_encoder`: the encoder the workers load instead of the bundle's (HYV_TEXT_ENCODER)."""
        try:
            spec = read_bundle_spec(weights)
        except FileNotFoundError as exc:
            logger.warning("%s; validating requests against the default model limits", exc)
            return cls(name)
        if not (weights / BUNDLE_FILE).is_file():  # a HunyuanVideo release folder, served as is
            layout = find_release(weights)
            assert layout is not None  # read_bundle_spec found one
            created = max((int(p.stat().st_mtime) for p in layout.weight_files), default=0)
            return cls(name, spec.limits, None, layout.supports_image or spec.limits.requires_image, created)
        supports_image, fixed_steps = True, None
        guidance_mode: GuidanceMode | None = None
        config_path = weights / "dit" / "config.json"
        try:
            config = json.loads(config_path.read_text())
            supports_image = config.get("image_condition") is not None
            guidance_mode = "embedded" if config.get("guidance_embed") else "true_cfg"
        except (OSError, ValueError):
            logger.warning("cannot read %s; assuming the model accepts an input image", config_path)
        try:
            metadata = read_weights_metadata(weights / "dit" / "model.safetensors")
            if SCHEDULE_METADATA_KEY in metadata:
                fixed_steps = len(json.loads(metadata[SCHEDULE_METADATA_KEY])) - 1
            if metadata.get(GUIDANCE_MODE_METADATA_KEY) == "true_cfg":  # as the pipeline samples it
                guidance_mode = "true_cfg"
        except Exception as exc:  # a missing or foreign checkpoint: the worker will say more
            logger.warning("cannot read the DiT metadata in %s: %s", weights / "dit", exc)
        created = int((weights / BUNDLE_FILE).stat().st_mtime)
        vocabulary = None
        try:
            vocabulary = bundle_prompt_vocabulary(weights, text_encoder)
        except ValueError as exc:  # a built-in encoder without a readable tokenizer: the worker fails
            logger.warning("cannot read the text encoder's vocabulary: %s; accepting any prompt", exc)
        supports_image = supports_image or spec.limits.requires_image
        return cls(
            name, spec.limits, fixed_steps, supports_image, created, vocabulary, guidance_mode=guidance_mode
        )

    def public(self) -> ModelPublic:
        limits = self.limits
        return ModelPublic(
            id=self.name,
            created=self.created,
            supports_image=self.supports_image,
            requires_image=limits.requires_image,
            defaults={
                "width": limits.width,
                "height": limits.height,
                "num_frames": limits.num_frames,
                "fps": limits.fps,
                "steps": self.fixed_steps or limits.steps,
                "guidance": limits.guidance,
                "flow_shift": limits.flow_shift,
            },
            max_width=limits.max_width,
            max_height=limits.max_height,
            max_frames=limits.max_frames,
            max_steps=limits.max_steps,
            fixed_steps=self.fixed_steps,
            guidance_mode=self.guidance_mode,
            sizes=[f"{w}x{h}" for w, h in limits.buckets] if limits.buckets else None,
            frame_counts=list(limits.frame_counts) if limits.frame_counts else None,
            vocabulary=self.vocabulary.sorted_words() if self.vocabulary else None,
            grammar=CaptionGrammarPublic.of(self.vocabulary.grammar)
            if self.vocabulary and self.vocabulary.grammar
            else None,
            loras=lora_names(self.lora_folder),
        )

    def check_loras(self, loras: list[LoraChoice]) -> None:
        """Every named adapter is in the LoRA folder and its file's header is sound (hyv.engine.lora_folder);
        the worker checks the layers and the values before the job runs."""
        available = lora_names(self.lora_folder)
        for lora in loras:
            if lora.name not in available:
                raise InvalidRequestError(
                    f"loras: no LoRA named {lora.name!r}; available: {available if available else 'none'}",
                    "loras",
                )
            assert self.lora_folder is not None  # it lists the name
            try:
                check_lora_header(self.lora_folder / f"{lora.name}{LORA_SUFFIX}")
            except ValueError as exc:
                raise InvalidRequestError(f"loras: {exc}", "loras") from None

    def check_prompt(self, text: str, param: str = "prompt", allow_empty: bool = False) -> None:
        """422 naming the words outside the built-in text encoder's vocabulary (any text passes for
        other encoders), pointing at where the vocabulary and grammar are listed."""
        if self.vocabulary is None:
            return
        try:
            self.vocabulary.check(text, param, allow_empty)
        except OffVocabularyError as exc:
            raise InvalidRequestError(
                f"{exc}; see GET /v1/models/{self.name} for the vocabulary and grammar",
                param,
                "prompt_outside_vocabulary",
            ) from None


def read_weights_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file (what hyv.models.save_dit stores, e.g. a distilled
    schedule), read from its header without torch: the API process never imports it."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        return dict(handle.metadata() or {})


def parse_size(size: str) -> tuple[int, int]:
    """'WIDTHxHEIGHT' -> (width, height), each side 1 to MAX_SIZE_SIDE pixels, or a 422."""
    match = SIZE_PATTERN.match(size)
    if not match:
        raise InvalidRequestError(f"size must be 'WIDTHxHEIGHT' such as '128x128', got {size!r}", "size")
    width, height = int(match.group(1)), int(match.group(2))
    if not (1 <= width <= MAX_SIZE_SIDE and 1 <= height <= MAX_SIZE_SIDE):
        raise InvalidRequestError(
            f"size {size.strip()!r}: width and height must be 1 to {MAX_SIZE_SIDE} pixels", "size"
        )
    return width, height


def snap_size(width: int, height: int, buckets: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """The bucket of the nearest aspect ratio to width x height (ratios compared as logarithms, so
    a portrait size is as far from a landscape bucket as its mirror image), the nearest area among
    equally near ones; a 422 when even the nearest ratio is off by more than MAX_ASPECT_MISMATCH."""
    ratio = math.log(width / height)

    def distance(bucket: tuple[int, int]) -> tuple[float, float]:
        aspect = abs(math.log(bucket[0] / bucket[1]) - ratio)
        return round(aspect, 9), abs(math.log(bucket[0] * bucket[1] / (width * height)))

    best = min(buckets, key=distance)
    if math.exp(distance(best)[0]) > MAX_ASPECT_MISMATCH:
        sizes = ", ".join(f"{w}x{h}" for w, h in buckets)
        raise InvalidRequestError(
            f"size {width}x{height}: its aspect ratio ({width / height:.3g}) is not within a factor of "
            f"{MAX_ASPECT_MISMATCH:g} of any of this model's sizes: {sizes}",
            "size",
        )
    return best


def frames_for_seconds(
    seconds: str, fps: int, max_frames: int, frame_counts: tuple[int, ...] | None = None
) -> int:
    """OpenAI's `seconds` -> the model's frame count whose duration (frames - 1) / fps is nearest:
    one of `frame_counts` (the model's lengths) when it has them, else a 4n+1 up to max_frames; the
    longer of two equally near, and a single frame (a still image) only if the model makes nothing
    else. A 422 for a value that is not a duration."""
    try:
        value = float(seconds)
    except ValueError:
        raise InvalidRequestError(
            f"seconds must be a number such as '4', got {seconds!r}", "seconds"
        ) from None
    if not 0 < value < MAX_SECONDS:
        raise InvalidRequestError(
            f"seconds must be more than 0 and less than {MAX_SECONDS}, got {seconds!r}", "seconds"
        )
    counts = list(frame_counts) if frame_counts is not None else list(range(1, max_frames + 1, 4))
    moving = [n for n in counts if n > 1] or counts
    wanted = value * fps + 1
    return min(moving, key=lambda n: (abs(n - wanted), -n))


def requested_fields(body: VideoCreate) -> dict[str, str | None]:
    """What the request asked for in OpenAI's terms, for the job's record (Job.requested_size and
    requested_seconds; None where not sent): the size as 'WxH' and the seconds as sent, before
    build_plan mapped them onto the model's sizes and lengths."""
    size = None
    if body.size is not None:
        width, height = parse_size(body.size)
        size = f"{width}x{height}"
    seconds = body.seconds.strip() if body.seconds is not None else None
    return {"requested_size": size, "requested_seconds": seconds}


def decode_data_url(value: str | ImageReference, max_bytes: int) -> bytes:
    """A base64 data URL (or OpenAI's {'image_url': ...}) -> image bytes, within the upload limit."""
    if isinstance(value, ImageReference):
        if value.file_id is not None:
            raise InvalidRequestError(
                "input_reference.file_id is not supported: upload the image", "input_reference"
            )
        if value.image_url is None:
            raise InvalidRequestError(
                "input_reference needs image_url (a base64 data URL)", "input_reference"
            )
        value = value.image_url
    match = DATA_URL_PATTERN.match(value.strip())
    if not match:
        shown = value[:40] + ("..." if len(value) > 40 else "")
        raise InvalidRequestError(
            f"input_reference must be a base64 data URL ('data:image/png;base64,...'), got {shown!r}; "
            "remote URLs are not fetched",
            "input_reference",
        )
    payload = match.group(3)
    if len(payload) * 3 // 4 > max_bytes + 3:
        raise TooLargeError(
            f"input_reference is about {len(payload) * 3 // 4} bytes, over the upload limit of {max_bytes}",
            "upload_too_large",
            "input_reference",
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequestError(f"input_reference is not valid base64: {exc}", "input_reference") from None


def _param_of(message: str) -> str:
    head = message.split(" ", 1)[0].rstrip(":")
    return {"width": "size", "height": "size", "image": "input_reference"}.get(head, head)


def build_plan(body: VideoCreate, image: bytes | None, model: ServedModel) -> GenerationPlan:
    """Validate the body against the engine's request rules and the model's limits."""
    if body.model is not None and body.model != model.name:
        raise InvalidRequestError(
            f"model {body.model!r} is not served here; this server serves {model.name!r}", "model"
        )
    if image is not None and not model.supports_image:
        raise InvalidRequestError(
            f"model {model.name!r} is text-to-video only: it cannot take input_reference", "input_reference"
        )
    width = height = None
    if body.size is not None:
        width, height = parse_size(body.size)
        buckets = model.limits.buckets
        if buckets and (width, height) not in buckets:
            width, height = snap_size(width, height, buckets)
    num_frames = body.num_frames
    if num_frames is None and body.seconds is not None:
        fps = body.fps if body.fps is not None and body.fps > 0 else model.limits.fps
        num_frames = frames_for_seconds(body.seconds, fps, model.limits.max_frames, model.limits.frame_counts)
    try:
        request = GenerationRequest(
            prompt=body.prompt,
            negative_prompt=body.negative_prompt or "",
            image=image,
            width=width,
            height=height,
            num_frames=num_frames,
            fps=body.fps,
            steps=body.steps,
            guidance=body.guidance,
            seed=body.seed,
            loras=tuple(body.loras or ()),
            cache=body.cache,
        )
    except ValidationError as exc:
        message, param = validation_message(exc.errors())
        if param in ("width", "height"):
            param = "size"
        raise InvalidRequestError(message, param) from None
    model.check_loras(list(request.loras))
    model.check_prompt(request.prompt, "prompt")
    if request.negative_prompt:
        model.check_prompt(request.negative_prompt, "negative_prompt", allow_empty=True)
    try:
        plan = resolve(request, model.limits, model.fixed_steps)
    except ValueError as exc:
        param = _param_of(str(exc))
        message = str(exc)
        if param == "size" and not message.startswith("size"):
            message = f"size {plan_size(width, height, model)}: {message}"
        raise InvalidRequestError(message, param) from None
    if image is not None:
        try:
            load_image(image)
        except ValueError as exc:
            raise InvalidRequestError(f"input_reference: {exc}", "input_reference") from None
    return plan


def plan_size(width: int | None, height: int | None, model: ServedModel) -> str:
    return f"{width or model.limits.width}x{height or model.limits.height}"


def plan_to_request_dict(plan: GenerationPlan) -> dict[str, object]:
    """The GenerationRequest-compatible dict stored with the job: every value resolved (the seed
    too), the image left out (it is stored separately)."""
    return {
        "prompt": plan.prompt,
        "negative_prompt": plan.negative_prompt,
        "width": plan.width,
        "height": plan.height,
        "num_frames": plan.num_frames,
        "fps": plan.fps,
        "steps": plan.steps,
        "guidance": plan.guidance,
        "flow_shift": plan.flow_shift,
        "seed": plan.seed,
        "loras": [lora.model_dump() for lora in plan.loras],
        "cache": None if plan.cache is None else plan.cache.describe(),
    }


def duration_text(num_frames: int, fps: int) -> str:
    return f"{(num_frames - 1) / fps:g}"


def now() -> int:
    return int(time.time())
