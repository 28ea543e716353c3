"""`evaluate_bundle`: the held-out evaluation behind `hyv train eval` and the model card's numbers.

It runs per bucket (``WIDTHxHEIGHTxFRAMES``, `hyv.training.data.buckets`; frames 1 is an image):
`EvalConfig.buckets` if given, else the buckets the student's bundle.json lists (``limits.buckets``,
(width, height) pairs, times ``limits.frame_counts``, else ``limits.num_frames``), else
``size`` x ``size`` x ``num_frames``. At each bucket, in order (every step batched over clips, all
under `torch.inference_mode`):

1. The eval set: the held-out combinations (all 44, or an evenly spread subset), each
   ``samples_per_combination`` times. Item ``k * 44 + i`` of ``SyntheticVideoDataset("heldout",
   seed=seed, image_fraction=0)`` at the bucket's aspect gives sample ``k`` of held-out combination
   ``i``: its caption, and a rendered ground-truth clip (for the VAE and I2V and as a check of the
   judge, whose reading of them is reported as ``judge_ground_truth``). Item ``j`` of the list is
   generated from noise seed ``noise_seed(seed, j)``, the same for the teacher and the student and
   at every bucket.
2. Teacher (optional): ``teacher_steps`` (50) steps with true CFG at ``teacher_guidance``
   against ``negative_prompt`` ("" = the unconditional prompt of text dropout). With
   ``teacher_results`` (an earlier eval.json of the same teacher) the teacher runs at the cheapest
   bucket only, must reproduce that file there clip for clip, and the file gives the other buckets
   (`hyv.training.eval.reuse`).
3. Student: exactly as `VideoPipeline` serves it by default (distilled schedule, embedded
   guidance). Both in batches with the pipeline's own settings and noise: `hyv.training.eval.sampling`.
   ``batch_size`` is the batch at ``size`` x ``size`` x ``num_frames``; larger buckets get
   proportionally fewer clips per batch (the same number of DiT tokens).
4. The judge (`hyv.training.eval.judge`) reads color, shape, motion and background off every clip,
   and measures shape IoU, clean frames and objects per frame.
5. VAE: posterior mode -> decode of the ground-truth clips, untiled and with `eval_tiling` (the
   largest tiles that split every dimension, 50% overlap: 48 px x 16 frames at 64x64x17); mean
   PSNR (per clip, capped at `PSNR_CAP`) and SSIM.
6. I2V (models with an image condition; video buckets): the student generates from the first
   ground-truth frame and the caption; PSNR/SSIM of the generated first frame vs that image.

The student is loaded first (every bucket's sampler checked before any generation); the teacher
then runs over every bucket and is released before the student's runs.

Outputs: ``out_dir/eval.json`` (a section per bucket under ``"buckets"``; at the top level a
single-bucket run keeps that bucket's sections, as before buckets, and a several-bucket run the
accuracies over every bucket's clips; ``"passed"``: every threshold at every bucket),
``out_dir/contact_sheet.png`` (``sheet_clips`` clips spread over the buckets) and, with several buckets,
``out_dir/contact_sheet_<bucket>.png`` (``sheet_clips`` clips each); and (``write_card``) the model
card ``MODEL_CARD.md`` in the student bundle (`hyv.training.eval.card`).
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import json
import logging
import math
import platform
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hyv.engine.bundle import BUNDLE_FILE
from hyv.engine.limits import SIZE_MULTIPLE, TIME_STRIDE
from hyv.engine.pipeline import PipelineOptions, VideoPipeline, default_device_and_dtype
from hyv.engine.video_io import video_to_uint8
from hyv.models import VAETiling
from hyv.models.checkpoint_io import parse_dtype
from hyv.training.data import ClipSpec, SyntheticVideoDataset, caption, heldout_combinations, render_clip
from hyv.training.data.buckets import Bucket, parse_buckets
from hyv.training.data.dataset import to_tensor
from hyv.training.eval.card import check_thresholds, describe_bundle, write_model_card
from hyv.training.eval.judge import judge_clip, score
from hyv.training.eval.metrics import i2v_consistency, psnr, ssim
from hyv.training.eval.reuse import check_reproduced, load_teacher_results
from hyv.training.eval.sampling import (
    SamplerSettings,
    batches,
    generate_clips,
    served_sampler,
    teacher_sampler,
)
from hyv.training.eval.sheet import save_contact_sheet, sheet_rows

logger = logging.getLogger(__name__)

EVAL_FILE = "eval.json"
SHEET_FILE = "contact_sheet.png"
PSNR_CAP = 100.0  # dB; a perfect reconstruction would otherwise make the mean infinite
ATTRIBUTES = ("color", "shape", "motion", "background", "all")
GAP_KEYS = (*ATTRIBUTES, "iou", "clean", "one_object")  # teacher - student, in points (IoU x 100)
# The sections of a bucket that a single-bucket eval.json also keeps at the top level.
BUCKET_SECTIONS = ("judge_ground_truth", "teacher", "student", "gap_points", "vae", "i2v")


class InvalidBundleError(ValueError):
    """A bundle directory that is missing or cannot be loaded."""


@dataclass(frozen=True)
class EvalConfig:
    student: Path
    out_dir: Path = Path("runs/eval")
    teacher: Path | None = None
    size: int = 64
    num_frames: int = 17
    # "WIDTHxHEIGHTxFRAMES" each (frames 1: images); empty: the student bundle's, else size x size
    # x num_frames (module docstring)
    buckets: tuple[str, ...] = ()
    samples_per_combination: int = 1
    combinations: int | None = None  # None: all 44 held-out combinations; n: n spread evenly
    seed: int = 0
    batch_size: int = 16  # clips per batched generation at size x size x num_frames (true CFG doubles it)
    teacher_steps: int = 50
    teacher_guidance: float | None = None  # None: the teacher bundle's default guidance
    negative_prompt: str = ""
    # an earlier eval.json of the same teacher: its teacher results reused (hyv.training.eval.reuse)
    teacher_results: Path | None = None
    vae: bool = True
    vae_clips: int | None = None  # VAE PSNR/SSIM on this many clips per bucket, spread evenly (None: all)
    i2v: bool = True
    sheet_clips: int = 8  # clips shown on the contact sheet (0: no sheet)
    write_card: bool = True
    device: str | None = None  # None: cuda if available, else cpu
    dtype: str | None = None  # None: bf16 on GPU, fp32 on CPU
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "student", Path(self.student))
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        if self.teacher is not None:
            object.__setattr__(self, "teacher", Path(self.teacher))
        if self.teacher_results is not None:
            if self.teacher is None:
                raise ValueError(
                    "teacher_results needs the teacher bundle too (it is regenerated at one bucket to check)"
                )
            object.__setattr__(self, "teacher_results", Path(self.teacher_results))
        if self.size < SIZE_MULTIPLE or self.size % SIZE_MULTIPLE:
            raise ValueError(
                f"size must be a multiple of {SIZE_MULTIPLE} (>= {SIZE_MULTIPLE}), got {self.size}"
            )
        if self.num_frames < 5 or (self.num_frames - 1) % TIME_STRIDE:
            raise ValueError(f"num_frames must be 4n+1 and >= 5 (motion is judged), got {self.num_frames}")
        buckets = self.buckets.split(",") if isinstance(self.buckets, str) else self.buckets
        if buckets:
            try:
                parsed = parse_buckets([_bucket_text(b) for b in buckets])
            except ValueError as exc:
                raise ValueError(f"buckets: {exc}") from exc
            object.__setattr__(self, "buckets", tuple(str(b) for b in parsed))
        else:
            object.__setattr__(self, "buckets", ())
        total = len(heldout_combinations())
        if self.combinations is not None and not 1 <= self.combinations <= total:
            raise ValueError(f"combinations must be in [1, {total}], got {self.combinations}")
        for name in ("samples_per_combination", "batch_size", "teacher_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.vae_clips is not None and self.vae_clips < 1:
            raise ValueError(f"vae_clips must be >= 1 (or None: every clip), got {self.vae_clips}")
        if self.seed < 0 or self.sheet_clips < 0:
            raise ValueError(f"seed and sheet_clips must be >= 0, got {self.seed}, {self.sheet_clips}")
        if self.teacher_guidance is not None and not 0.0 <= self.teacher_guidance <= 100.0:
            raise ValueError(f"teacher_guidance must be in [0, 100], got {self.teacher_guidance}")

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))  # type: ignore[no-any-return]

    @property
    def reference_bucket(self) -> Bucket:
        """size x size x num_frames: where ``batch_size`` clips make a batch."""
        return Bucket(self.size, self.size, self.num_frames)

    def batch_for(self, bucket: Bucket) -> int:
        """Clips per batch at ``bucket``: ``batch_size`` at the reference bucket, fewer for more
        DiT tokens (never more than ``batch_size``)."""
        return max(1, min(self.batch_size, self.batch_size * self.reference_bucket.tokens // bucket.tokens))


def _bucket_text(value: Any) -> str:
    """A bucket given as "96x64x17", a `Bucket`, {"width", "height", "frames"} or (w, h, frames)."""
    if isinstance(value, dict):
        return f"{value.get('width')}x{value.get('height')}x{value.get('frames')}"
    if isinstance(value, list | tuple) and len(value) == 3:
        return "x".join(str(v) for v in value)
    return str(value)


@dataclass(frozen=True)
class EvalItem:
    index: int
    spec: ClipSpec
    caption: str
    noise_seed: int


def noise_seed(seed: int, index: int) -> int:
    """The generation seed of eval item ``index`` (as `GenerationRequest.seed`)."""
    return int(np.random.default_rng([seed, 0x5EED, index]).integers(2**31))


def heldout_items(
    combinations: int | None = None,
    samples_per_combination: int = 1,
    seed: int = 0,
    size: int = 64,
    height: int | None = None,
) -> list[EvalItem]:
    """The eval set (module docstring, step 1) for frames ``size`` wide and ``height`` (default:
    ``size``) high: only the aspect matters, a square frame gives the geometry of every earlier
    version. Captions and noise seeds do not depend on the frame."""
    heldout = heldout_combinations()
    n = len(heldout) if combinations is None else combinations
    if not 1 <= n <= len(heldout):
        raise ValueError(f"combinations must be in [1, {len(heldout)}], got {combinations}")
    positions = [j * len(heldout) // n for j in range(n)]
    dataset = SyntheticVideoDataset(
        "heldout",
        size=size,
        height=height,
        image_fraction=0.0,
        seed=seed,
        length=len(heldout) * samples_per_combination,
    )
    items: list[EvalItem] = []
    for k in range(samples_per_combination):
        for pos in positions:
            spec = dataset.spec(k * len(heldout) + pos)
            items.append(EvalItem(len(items), spec, caption(spec), noise_seed(seed, len(items))))
    return items


def bundle_buckets(path: Path) -> tuple[Bucket, ...] | None:
    """The buckets a bundle's bundle.json lists: ``limits.buckets`` ((width, height) pairs) times
    ``limits.frame_counts`` (else ``limits.num_frames``); None when it lists no buckets.
    ValueError naming the file for buckets that are not valid bucket shapes."""
    try:
        limits = json.loads((path / BUNDLE_FILE).read_text()).get("limits") or {}
    except (OSError, ValueError):
        return None
    sizes = limits.get("buckets")
    if not sizes:
        return None
    counts = limits.get("frame_counts") or [limits.get("num_frames", 17)]
    try:
        return parse_buckets(f"{int(w)}x{int(h)}x{int(f)}" for w, h in sizes for f in counts)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path / BUNDLE_FILE}: limits.buckets/frame_counts are not buckets: {exc}") from exc


def eval_buckets(config: EvalConfig) -> tuple[Bucket, ...]:
    """The buckets to evaluate (module docstring): the config's, the bundle's, or size/num_frames."""
    if config.buckets:
        return parse_buckets(config.buckets)
    return bundle_buckets(config.student) or (config.reference_bucket,)


def eval_tiling(size: int, frames: int, height: int | None = None) -> VAETiling:
    """The largest tiles that still split every dimension: a multiple of 16 below the short side
    (``size`` wide, ``height`` high) and of 8 below ``frames`` (temporal splitting needs frames
    > 8), with 50% overlap (the blend zones)."""
    side = min(size, height or size)
    return VAETiling(
        sample_size=max(16, (side - 1) // 16 * 16), sample_frames=max(8, (frames - 1) // 8 * 8), overlap=0.5
    )


# --- loading and sampler settings ---------------------------------------------------------------


def check_bundle_dir(path: Path, role: str) -> None:
    """`InvalidBundleError` unless ``path`` is a directory with a bundle.json."""
    if not path.is_dir():
        raise InvalidBundleError(f"{role} bundle directory {path} does not exist")
    if not (path / BUNDLE_FILE).is_file():
        raise InvalidBundleError(f"{role} bundle directory {path} is not a model bundle (no {BUNDLE_FILE})")


def open_bundle(path: Path, role: str, device: str | None, dtype: str | None) -> VideoPipeline:
    """A warm pipeline for the bundle at ``path``; `InvalidBundleError` naming the problem."""
    check_bundle_dir(path, role)
    default_device, default_dtype = default_device_and_dtype()
    options = PipelineOptions(device=device or default_device, dtype=parse_dtype(dtype) or default_dtype)
    try:
        return VideoPipeline.from_dir(path, options)
    except Exception as exc:
        raise InvalidBundleError(
            f"{role} bundle {path} could not be loaded: {type(exc).__name__}: {exc}"
        ) from exc


def _samplers(
    pipeline: VideoPipeline, buckets: Sequence[Bucket], role: str, config: EvalConfig
) -> dict[Bucket, SamplerSettings]:
    """Each bucket's sampler. The student's must be served at every bucket (ValueError naming the
    bucket otherwise). The teacher is a reference, not a served model: a bucket outside its
    bundle's limits (an intermediate bundle keeps its preset's limits) gets the settings of its
    default size (steps, guidance and flow shift do not depend on the size) and a warning."""
    out = {}
    for b in buckets:
        try:
            if role == "teacher":
                out[b] = teacher_sampler(
                    pipeline, b.width, b.frames, config.teacher_steps, config.teacher_guidance,
                    config.negative_prompt, height=b.height,
                )  # fmt: skip
            else:
                out[b] = served_sampler(pipeline, b.width, b.frames, height=b.height)
        except ValueError as exc:
            error = ValueError(f"the {role} cannot generate bucket {b}: {exc}")
            if role != "teacher":
                raise error from exc
            limits = pipeline.bundle.spec.limits
            try:
                out[b] = teacher_sampler(
                    pipeline, limits.width, limits.num_frames, config.teacher_steps, config.teacher_guidance,
                    config.negative_prompt, height=limits.height,
                )  # fmt: skip
            except ValueError:  # not the size: e.g. a step count the teacher refuses anywhere
                raise error from exc
            logger.warning(
                "the teacher bundle does not list bucket %s (%s): sampled there anyway with the settings "
                "of its default size", b, exc,
            )  # fmt: skip
    return out


@contextmanager
def _progress(enabled: bool) -> Iterator[Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description:<26}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not enabled) as bar:
        yield bar


# --- scoring -----------------------------------------------------------------------------------


def judge_clips(clips: Sequence[np.ndarray], items: Sequence[EvalItem]) -> dict[str, Any]:
    """Per-attribute accuracy, shape IoU and cleanliness (`score`) plus every clip's reading."""
    judgements = [judge_clip(clip) for clip in clips]
    accuracy = score(
        (j, item.caption, clip.shape[0]) for j, item, clip in zip(judgements, items, clips, strict=True)
    )
    records = []
    for j, item, clip in zip(judgements, items, clips, strict=True):
        want = item.spec.attributes
        got = (j.color, j.shape, j.motion, j.background)
        records.append(
            {
                "caption": item.caption,
                "seed": item.noise_seed,
                "judged": dict(zip(("color", "shape", "motion", "background"), got, strict=True)),
                "wrong": [
                    name
                    for name, a, b in zip(want._fields, want, got, strict=True)
                    if a != b and not (name == "motion" and clip.shape[0] == 1)  # images: no motion
                ],
                "iou": j.iou,
                "clean": j.clean,
                "objects": list(j.objects),
            }
        )
    return {"accuracy": accuracy, "clips": records}


def vae_metrics(
    pipeline: VideoPipeline, clips: Sequence[np.ndarray], batch_size: int, bar: Any = None, label: str = "vae"
) -> dict[str, Any]:
    """Reconstruction PSNR/SSIM of the pipeline's VAE, untiled and with `eval_tiling`."""
    vae, dtype = pipeline.vae, pipeline.options.dtype
    device = next(vae.parameters()).device
    tiling = eval_tiling(clips[0].shape[2], clips[0].shape[0], clips[0].shape[1])
    task = bar.add_task(label, total=len(clips)) if bar is not None else None
    recon: dict[str, list[np.ndarray]] = {"untiled": [], "tiled": []}
    with torch.inference_mode():
        for idx in batches(len(clips), batch_size):
            x = torch.stack([to_tensor(clips[i]) for i in idx]).to(device, dtype)
            for name, tiled in (("untiled", False), ("tiled", True)):
                z = vae.encode(x, tiled=tiled, tiling=tiling).mode()
                video = vae.decode(z, tiled=tiled, tiling=tiling).float()
                recon[name] += [video_to_uint8(v) for v in video]
            if bar is not None:
                bar.update(task, advance=len(idx))
    out: dict[str, Any] = {"tiling": dataclasses.asdict(tiling), "n": len(clips)}
    for name, rec in recon.items():
        pairs = list(zip(clips, rec, strict=True))
        out[name] = {
            "psnr": float(np.mean([min(psnr(a, b), PSNR_CAP) for a, b in pairs])),
            "ssim": float(np.mean([ssim(a, b) for a, b in pairs])),
        }
    return out


def i2v_metrics(
    pipeline: VideoPipeline,
    sampler: SamplerSettings,
    items: Sequence[EvalItem],
    truth: Sequence[np.ndarray],
    batch_size: int,
    bar: Any = None,
    label: str = "student i2v",
) -> dict[str, Any]:
    """Generate from each ground-truth first frame + caption; PSNR/SSIM of the first frames."""
    start = time.perf_counter()
    firsts = [clip[0] for clip in truth]
    frames, height, width = truth[0].shape[:3]
    prompts, seeds = [it.caption for it in items], [it.noise_seed for it in items]
    clips = generate_clips(
        pipeline, sampler, prompts, seeds, width, frames, batch_size, images=firsts, bar=bar, label=label,
        height=height,
    )  # fmt: skip
    scores = [i2v_consistency(clip, image) for clip, image in zip(clips, firsts, strict=True)]
    psnrs = [min(s["psnr"], PSNR_CAP) for s in scores]
    return {
        "psnr": float(np.mean(psnrs)),
        "psnr_min": float(min(psnrs)),
        "ssim": float(np.mean([s["ssim"] for s in scores])),
        "accuracy": judge_clips(clips, items)["accuracy"],
        "n": len(items),
        "wall_s": time.perf_counter() - start,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def command_line(config: EvalConfig, buckets: Sequence[Bucket] | None = None) -> str:
    """The `hyv train eval` command that reruns this evaluation (at ``buckets``, default the
    config's own)."""
    parts = ["hyv train eval", f"--student {config.student}", f"--out {config.out_dir}"]
    if config.teacher is not None:
        parts.append(f"--teacher {config.teacher} --teacher-steps {config.teacher_steps}")
        if config.teacher_guidance is not None:
            parts.append(f"--teacher-guidance {config.teacher_guidance:g}")
        if config.negative_prompt:
            parts.append(f"--negative-prompt {json.dumps(config.negative_prompt)}")
        if config.teacher_results is not None:
            parts.append(f"--teacher-results {config.teacher_results}")
    buckets = (
        list(buckets)
        if buckets is not None
        else parse_buckets(config.buckets or [str(config.reference_bucket)])
    )
    parts.append(f"--buckets {','.join(str(b) for b in buckets)} --seed {config.seed}")
    if config.reference_bucket != Bucket(64, 64, 17) or config.batch_size != 16:
        parts.append(f"--size {config.size} --frames {config.num_frames} --batch-size {config.batch_size}")
    parts.append(f"--samples-per-combination {config.samples_per_combination}")
    if config.combinations is not None:
        parts.append(f"--combinations {config.combinations}")
    parts += [] if config.vae else ["--no-vae"]
    parts += [] if config.vae_clips is None or not config.vae else [f"--vae-clips {config.vae_clips}"]
    parts += [] if config.i2v else ["--no-i2v"]
    return " ".join(parts)


# --- the whole evaluation ----------------------------------------------------------------------


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class _BucketRun:
    """One bucket's eval set, ground truth and results as they fill in."""

    bucket: Bucket
    items: list[EvalItem]
    truth: list[np.ndarray]
    batch: int
    result: dict[str, Any]
    sheet: list[tuple[str, list[np.ndarray], list[dict[str, Any]]]]  # (role, clips, records)

    @property
    def name(self) -> str:
        return str(self.bucket)


def _prepare(bucket: Bucket, config: EvalConfig) -> _BucketRun:
    items = heldout_items(
        config.combinations, config.samples_per_combination, config.seed, bucket.width, bucket.height
    )
    truth = [render_clip(it.spec, bucket.frames, bucket.width, bucket.height) for it in items]
    result: dict[str, Any] = {
        "bucket": str(bucket),
        "width": bucket.width,
        "height": bucket.height,
        "frames": bucket.frames,
        "n_clips": len(items),
        "batch_size": config.batch_for(bucket),
        "judge_ground_truth": judge_clips(truth, items)["accuracy"],  # all 1.0 and IoU ~1 expected
        "teacher": None,
        "student": None,
        "gap_points": None,
        "vae": None,
        "i2v": None,
    }
    return _BucketRun(bucket, items, truth, config.batch_for(bucket), result, [])


def _model_run(
    pipeline: VideoPipeline,
    sampler: SamplerSettings,
    entry: _BucketRun,
    bundle: Path,
    bar: Any,
    role: str,
) -> tuple[dict[str, Any], list[np.ndarray]]:
    start = time.perf_counter()
    b = entry.bucket
    prompts, seeds = [it.caption for it in entry.items], [it.noise_seed for it in entry.items]
    clips = generate_clips(
        pipeline, sampler, prompts, seeds, b.width, b.frames, entry.batch, bar=bar, label=f"{b} {role}",
        height=b.height,
    )  # fmt: skip
    generate_s = time.perf_counter() - start
    start = time.perf_counter()
    judged = judge_clips(clips, entry.items)
    result = {
        "bundle": str(bundle),
        "name": pipeline.bundle.spec.name,
        "sampler": sampler.to_dict(),
        **judged,
        "wall_s": {"generate": generate_s, "judge": time.perf_counter() - start},
        "seconds_per_clip": generate_s / len(entry.items),
    }
    acc = judged["accuracy"]
    logger.info(
        "%s %s: color %.1f%%, shape %.1f%%, motion %s, IoU %.3f, clean %.1f%% (%d clips, %.1f s)",
        b, role, 100 * acc["color"], 100 * acc["shape"],
        "n/a" if math.isnan(acc["motion"]) else f"{100 * acc['motion']:.1f}%", acc["iou"],
        100 * acc["clean"], len(clips), generate_s,
    )  # fmt: skip
    return result, clips


def _sheet_picks(n: int, count: int) -> list[int]:
    """``count`` indices of ``n`` spread evenly (all of them when count >= n)."""
    return sorted({j * n // min(count, n) for j in range(min(count, n))}) if count > 0 else []


def _sheet_clips(
    entry: _BucketRun, role: str, clips: list[np.ndarray], records: list[dict[str, Any]], count: int
) -> None:
    """Keep the clips a contact sheet shows (not every clip: memory at 128x128x33)."""
    picks = _sheet_picks(len(clips), count)
    entry.sheet.append((f"{role} {entry.name}", [clips[i] for i in picks], [records[i] for i in picks]))


def _pooled(entries: Sequence[_BucketRun], section: str) -> dict[str, float] | None:
    """The accuracy of ``section`` ("student", "teacher" or "judge_ground_truth") over every
    bucket's clips: weighted by clips, motion by video clips, clean frames by frames."""
    pairs = []
    for e in entries:
        value = e.result.get(section)
        if value:
            pairs.append((value.get("accuracy", value), e.bucket.frames))
    if not pairs:
        return None
    n = sum(a["n"] for a, _ in pairs)
    out = {
        k: sum(a[k] * a["n"] for a, _ in pairs) / n for k in ("color", "shape", "background", "all", "iou")
    }
    frames = sum(a["n"] * t for a, t in pairs)
    for key in ("clean", "one_object"):
        out[key] = sum(a[key] * a["n"] * t for a, t in pairs) / frames
    n_motion = sum(a["n_motion"] for a, _ in pairs)
    out["motion"] = (
        sum(a["motion"] * a["n_motion"] for a, _ in pairs if a["n_motion"]) / n_motion
        if n_motion
        else math.nan
    )
    out["n"], out["n_motion"] = n, n_motion
    return out


def _gaps(teacher: dict[str, float], student: dict[str, float]) -> dict[str, float]:
    return {k: 100.0 * (teacher[k] - student[k]) for k in GAP_KEYS}


def _reusable_teacher_results(
    config: EvalConfig, settings: dict[str, Any], entries: Sequence[_BucketRun]
) -> dict[str, dict[str, Any]]:
    if config.teacher_results is None:
        return {}
    records = [
        {
            "bucket": e.name,
            "batch_size": e.batch,
            "items": [(it.caption, it.noise_seed) for it in e.items],
        }
        for e in entries
    ]
    return load_teacher_results(config.teacher_results, settings, records)


def evaluate_bundle(config: EvalConfig) -> dict[str, Any]:
    """Run the evaluation (module docstring); write eval.json, the contact sheets and the card.

    Returns what eval.json holds. Raises `InvalidBundleError` for a missing or unloadable bundle
    and ValueError for a bucket or step count a bundle cannot serve (the student's are checked
    before any generation, the teacher's before the teacher's)."""
    started = time.perf_counter()
    for role in ("student", "teacher"):  # both checked before any work
        if getattr(config, role) is not None:
            check_bundle_dir(getattr(config, role), role)
    buckets = eval_buckets(config)
    student = open_bundle(config.student, "student", config.device, config.dtype)
    samplers = _samplers(student, buckets, "student", config)  # refuses a bucket it can't serve
    entries = [_prepare(b, config) for b in buckets]
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command_line(config, buckets),
        "settings": {
            **config.to_dict(),
            "buckets": [str(b) for b in buckets],
            "combinations_evaluated": sorted({it.caption for it in entries[0].items}),
            "n_clips": len(entries[0].items),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": str(student.device),
            "dtype": str(student.options.dtype).removeprefix("torch."),
        },
        "models": {"student": describe_bundle(config.student), "teacher": None},
    }
    sheet_count = max(1, config.sheet_clips // len(entries)) if config.sheet_clips else 0
    with _progress(config.progress) as bar:
        overall = bar.add_task("buckets", total=len(entries) * (2 if config.teacher is not None else 1))
        if config.teacher is not None:
            teacher = open_bundle(config.teacher, "teacher", config.device, config.dtype)
            teacher_samplers = _samplers(teacher, buckets, "teacher", config)
            results["models"]["teacher"] = describe_bundle(config.teacher)
            reused = _reusable_teacher_results(config, results["settings"], entries)
            check = min((e for e in entries if e.name in reused), key=lambda e: e.bucket.tokens, default=None)
            for entry in sorted(entries, key=lambda e: e is not check):  # the check first
                if entry.name in reused and entry is not check:
                    source = str(config.teacher_results)
                    entry.result["teacher"] = {**reused[entry.name], "reused_from": source}
                    bar.update(overall, advance=1)
                    continue
                run, clips = _model_run(
                    teacher, teacher_samplers[entry.bucket], entry, config.teacher, bar, "teacher"
                )
                if entry is check:
                    assert config.teacher_results is not None
                    run["reproduces"] = {
                        "file": str(config.teacher_results),
                        "largest_difference": check_reproduced(
                            reused[entry.name], run, entry.name, config.teacher_results
                        ),
                    }
                    logger.info("the teacher reproduces %s at %s", config.teacher_results, entry.name)
                entry.result["teacher"] = run
                _sheet_clips(entry, "teacher", clips, run["clips"], config.sheet_clips)
                bar.update(overall, advance=1)
            del teacher
            _release_memory()
        for entry in entries:
            bucket_start = time.perf_counter()
            b, r = entry.bucket, entry.result
            r["student"], clips = _model_run(student, samplers[b], entry, config.student, bar, "student")
            _sheet_clips(entry, "student", clips, r["student"]["clips"], config.sheet_clips)
            del clips
            if r["teacher"] is not None:
                r["gap_points"] = _gaps(r["teacher"]["accuracy"], r["student"]["accuracy"])
            if config.vae:
                start = time.perf_counter()
                picks = _sheet_picks(len(entry.truth), config.vae_clips or len(entry.truth))
                r["vae"] = vae_metrics(student, [entry.truth[i] for i in picks], entry.batch, bar, f"{b} vae")
                r["vae"]["wall_s"] = time.perf_counter() - start
            if config.i2v and b.is_image:
                r["i2v"] = {"skipped": "an image bucket (frames 1): image-to-video needs frames to generate"}
            elif config.i2v and student.dit.config.image_condition is not None:
                r["i2v"] = i2v_metrics(
                    student, samplers[b], entry.items, entry.truth, entry.batch, bar, label=f"{b} student i2v"
                )
            elif config.i2v:
                r["i2v"] = {"skipped": "the student is text-to-video only (no image condition)"}
            teacher_now = r["teacher"] if r["teacher"] and "reused_from" not in r["teacher"] else {}
            r["wall_s"] = time.perf_counter() - bucket_start + sum(teacher_now.get("wall_s", {}).values())
            bar.update(overall, advance=1)
    del student
    _release_memory()
    results["buckets"] = [entry.result for entry in entries]
    if len(entries) == 1:  # as before buckets: the one bucket's sections at the top level
        results.update({key: entries[0].result[key] for key in BUCKET_SECTIONS})
    else:  # every bucket's clips together; the VAE and I2V only per bucket
        student_all, teacher_all = _pooled(entries, "student"), _pooled(entries, "teacher")
        results.update(
            judge_ground_truth=_pooled(entries, "judge_ground_truth"),
            student={"accuracy": student_all},
            teacher={"accuracy": teacher_all} if teacher_all else None,
            gap_points=_gaps(teacher_all, student_all) if teacher_all and student_all else None,
            vae=None,
            i2v=None,
        )
    for role in ("student", "teacher"):
        if results[role] is not None:
            results[role] = {**results[role], "model": results["models"][role]}
    results["thresholds"] = check_thresholds(results)
    results["passed"] = all(row["passed"] is not False for row in results["thresholds"])
    results["wall_s"] = time.perf_counter() - started
    results = _jsonable(results)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    (config.out_dir / EVAL_FILE).write_text(json.dumps(results, indent=2) + "\n")
    if config.sheet_clips > 0:
        _write_sheets(entries, config.out_dir, sheet_count)
    if config.write_card:
        write_model_card(config.student, results)
    logger.info("evaluation written to %s", config.out_dir / EVAL_FILE)
    return results


def sheet_file(bucket: Bucket | str) -> str:
    """The per-bucket contact sheet's file name (written when several buckets are evaluated)."""
    return f"contact_sheet_{bucket}.png"


def _write_sheets(entries: Sequence[_BucketRun], out_dir: Path, per_bucket: int) -> None:
    """contact_sheet.png: ``per_bucket`` clips of every bucket; with several buckets also one sheet
    per bucket with every kept clip."""
    overview = []
    for entry in entries:
        n = len(entry.sheet[0][1])
        picks = _sheet_picks(n, per_bucket)
        runs = [
            (role, [clips[i] for i in picks], [recs[i] for i in picks]) for role, clips, recs in entry.sheet
        ]
        overview += sheet_rows(runs, len(picks))
        if len(entries) > 1:
            save_contact_sheet(sheet_rows(entry.sheet, n), out_dir / sheet_file(entry.bucket))
    save_contact_sheet(overview, out_dir / SHEET_FILE)
