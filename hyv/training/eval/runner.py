"""`evaluate_bundle`: the held-out evaluation behind `hyv train eval` and the model card's numbers.

What runs, in order (every step batched over clips, all under `torch.inference_mode`):

1. The eval set: the held-out combinations (all 44, or an evenly spread subset), each
   ``samples_per_combination`` times. Item ``k * 44 + i`` of ``SyntheticVideoDataset("heldout",
   seed=seed, image_fraction=0)`` gives sample ``k`` of held-out combination ``i``: its caption,
   and a rendered ground-truth clip (for the VAE and I2V and as a check of the judge, whose
   accuracy on them is reported as ``judge_ground_truth``). Item ``j`` of the list is generated
   from noise seed ``noise_seed(seed, j)``, the same for the teacher and the student.
2. Teacher (optional): ``teacher_steps`` (50) steps with true CFG at ``teacher_guidance``
   against ``negative_prompt`` ("" = the unconditional prompt of text dropout).
3. Student: exactly as `VideoPipeline` serves it by default (distilled schedule, embedded
   guidance). Both in batches with the pipeline's own settings and noise: `hyv.training.eval.sampling`.
4. The judge (`hyv.training.eval.judge`) reads color, shape, motion and background off every clip.
5. VAE: posterior mode -> decode of the ground-truth clips, untiled and with `eval_tiling` (the
   largest tiles that split every dimension, 50% overlap: 48 px x 16 frames at 64x64x17); mean
   PSNR (per clip, capped at `PSNR_CAP`) and SSIM.
6. I2V (models with an image condition): the student generates from the first ground-truth frame
   and the caption; PSNR/SSIM of the generated first frame vs that image.

Outputs: ``out_dir/eval.json``, ``out_dir/contact_sheet.png`` and (``write_card``) the model card
``MODEL_CARD.md`` in the student bundle (`hyv.training.eval.card`).
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
from hyv.training.data.dataset import to_tensor
from hyv.training.eval.card import check_thresholds, describe_bundle, write_model_card
from hyv.training.eval.judge import evaluate, judge_clip
from hyv.training.eval.metrics import i2v_consistency, psnr, ssim
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


class InvalidBundleError(ValueError):
    """A bundle directory that is missing or cannot be loaded."""


@dataclass(frozen=True)
class EvalConfig:
    student: Path
    out_dir: Path = Path("runs/eval")
    teacher: Path | None = None
    size: int = 64
    num_frames: int = 17
    samples_per_combination: int = 1
    combinations: int | None = None  # None: all 44 held-out combinations; n: n spread evenly
    seed: int = 0
    batch_size: int = 16  # clips per batched generation (true CFG doubles the DiT batch)
    teacher_steps: int = 50
    teacher_guidance: float | None = None  # None: the teacher bundle's default guidance
    negative_prompt: str = ""
    vae: bool = True
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
        if self.size < SIZE_MULTIPLE or self.size % SIZE_MULTIPLE:
            raise ValueError(
                f"size must be a multiple of {SIZE_MULTIPLE} (>= {SIZE_MULTIPLE}), got {self.size}"
            )
        if self.num_frames < 5 or (self.num_frames - 1) % TIME_STRIDE:
            raise ValueError(f"num_frames must be 4n+1 and >= 5 (motion is judged), got {self.num_frames}")
        total = len(heldout_combinations())
        if self.combinations is not None and not 1 <= self.combinations <= total:
            raise ValueError(f"combinations must be in [1, {total}], got {self.combinations}")
        for name in ("samples_per_combination", "batch_size", "teacher_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0 or self.sheet_clips < 0:
            raise ValueError(f"seed and sheet_clips must be >= 0, got {self.seed}, {self.sheet_clips}")
        if self.teacher_guidance is not None and not 0.0 <= self.teacher_guidance <= 100.0:
            raise ValueError(f"teacher_guidance must be in [0, 100], got {self.teacher_guidance}")

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))  # type: ignore[no-any-return]


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
    combinations: int | None = None, samples_per_combination: int = 1, seed: int = 0
) -> list[EvalItem]:
    """The eval set: see the module docstring (step 1)."""
    heldout = heldout_combinations()
    n = len(heldout) if combinations is None else combinations
    if not 1 <= n <= len(heldout):
        raise ValueError(f"combinations must be in [1, {len(heldout)}], got {combinations}")
    positions = [j * len(heldout) // n for j in range(n)]
    dataset = SyntheticVideoDataset(
        "heldout", image_fraction=0.0, seed=seed, length=len(heldout) * samples_per_combination
    )
    items: list[EvalItem] = []
    for k in range(samples_per_combination):
        for pos in positions:
            spec = dataset.spec(k * len(heldout) + pos)
            items.append(EvalItem(len(items), spec, caption(spec), noise_seed(seed, len(items))))
    return items


def eval_tiling(size: int, frames: int) -> VAETiling:
    """The largest tiles that still split every dimension: a multiple of 16 below ``size`` and of
    8 below ``frames`` (temporal splitting needs frames > 8), with 50% overlap (the blend zones)."""
    return VAETiling(
        sample_size=max(16, (size - 1) // 16 * 16), sample_frames=max(8, (frames - 1) // 8 * 8), overlap=0.5
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


@contextmanager
def _progress(enabled: bool) -> Iterator[Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not enabled) as bar:
        yield bar


# --- scoring -----------------------------------------------------------------------------------


def judge_clips(clips: Sequence[np.ndarray], items: Sequence[EvalItem]) -> dict[str, Any]:
    """Per-attribute accuracy (`evaluate`) plus every clip's reading."""
    accuracy = evaluate(zip(clips, [it.caption for it in items], strict=True))
    records = []
    for clip, item in zip(clips, items, strict=True):
        j = judge_clip(clip)
        want = item.spec.attributes
        got = (j.color, j.shape, j.motion, j.background)
        records.append(
            {
                "caption": item.caption,
                "seed": item.noise_seed,
                "judged": dict(zip(("color", "shape", "motion", "background"), got, strict=True)),
                "wrong": [name for name, a, b in zip(want._fields, want, got, strict=True) if a != b],
            }
        )
    return {"accuracy": accuracy, "clips": records}


def vae_metrics(
    pipeline: VideoPipeline, clips: Sequence[np.ndarray], batch_size: int, bar: Any = None
) -> dict[str, Any]:
    """Reconstruction PSNR/SSIM of the pipeline's VAE, untiled and with `eval_tiling`."""
    vae, dtype = pipeline.vae, pipeline.options.dtype
    device = next(vae.parameters()).device
    tiling = eval_tiling(clips[0].shape[1], clips[0].shape[0])
    task = bar.add_task("vae", total=len(clips)) if bar is not None else None
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
    config: EvalConfig,
    bar: Any = None,
) -> dict[str, Any]:
    """Generate from each ground-truth first frame + caption; PSNR/SSIM of the first frames."""
    start = time.perf_counter()
    firsts = [clip[0] for clip in truth]
    size, frames, batch = config.size, config.num_frames, config.batch_size
    prompts, seeds = [it.caption for it in items], [it.noise_seed for it in items]
    clips = generate_clips(
        pipeline, sampler, prompts, seeds, size, frames, batch, images=firsts, bar=bar, label="student i2v"
    )
    scores = [i2v_consistency(clip, image) for clip, image in zip(clips, firsts, strict=True)]
    psnrs = [min(s["psnr"], PSNR_CAP) for s in scores]
    return {
        "psnr": float(np.mean(psnrs)),
        "psnr_min": float(min(psnrs)),
        "ssim": float(np.mean([s["ssim"] for s in scores])),
        "accuracy": evaluate(zip(clips, [it.caption for it in items], strict=True)),
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


def command_line(config: EvalConfig) -> str:
    """The `hyv train eval` command that reruns this evaluation."""
    parts = ["hyv train eval", f"--student {config.student}", f"--out {config.out_dir}"]
    if config.teacher is not None:
        parts.append(f"--teacher {config.teacher} --teacher-steps {config.teacher_steps}")
        if config.teacher_guidance is not None:
            parts.append(f"--teacher-guidance {config.teacher_guidance:g}")
        if config.negative_prompt:
            parts.append(f"--negative-prompt {json.dumps(config.negative_prompt)}")
    parts.append(f"--size {config.size} --frames {config.num_frames} --seed {config.seed}")
    parts.append(f"--samples-per-combination {config.samples_per_combination}")
    if config.combinations is not None:
        parts.append(f"--combinations {config.combinations}")
    parts += [] if config.vae else ["--no-vae"]
    parts += [] if config.i2v else ["--no-i2v"]
    return " ".join(parts)


# --- the whole evaluation ----------------------------------------------------------------------


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _model_run(
    pipeline: VideoPipeline,
    sampler: SamplerSettings,
    items: list[EvalItem],
    config: EvalConfig,
    bar: Any,
    role: str,
) -> tuple[dict[str, Any], list[np.ndarray]]:
    start = time.perf_counter()
    prompts, seeds = [it.caption for it in items], [it.noise_seed for it in items]
    clips = generate_clips(
        pipeline,
        sampler,
        prompts,
        seeds,
        config.size,
        config.num_frames,
        config.batch_size,
        bar=bar,
        label=role,
    )
    generate_s = time.perf_counter() - start
    start = time.perf_counter()
    judged = judge_clips(clips, items)
    result = {
        "bundle": str(getattr(config, role)),
        "name": pipeline.bundle.spec.name,
        "sampler": sampler.to_dict(),
        **judged,
        "wall_s": {"generate": generate_s, "judge": time.perf_counter() - start},
        "seconds_per_clip": generate_s / len(items),
    }
    return result, clips


def evaluate_bundle(config: EvalConfig) -> dict[str, Any]:
    """Run the evaluation (module docstring); write eval.json, the contact sheet and the card.

    Returns what eval.json holds. Raises `InvalidBundleError` for a missing or unloadable bundle
    and ValueError for a size/step count a bundle cannot serve (the student's are checked before
    any generation, the teacher's before the teacher's)."""
    started = time.perf_counter()
    for role in ("student", "teacher"):  # both checked before any work
        if getattr(config, role) is not None:
            check_bundle_dir(getattr(config, role), role)
    items = heldout_items(config.combinations, config.samples_per_combination, config.seed)
    truth = [render_clip(it.spec, config.num_frames, config.size) for it in items]
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command_line(config),
        "settings": {
            **config.to_dict(),
            "combinations_evaluated": sorted({it.caption for it in items}),
            "n_clips": len(items),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "judge_ground_truth": evaluate(zip(truth, [it.caption for it in items], strict=True)),  # 1.0 expected
        "teacher": None,
        "gap_points": None,
        "vae": None,
        "i2v": None,
    }
    sheet: list[tuple[str, list[np.ndarray], list[dict[str, Any]]]] = []  # (role, clips, records)
    student = open_bundle(config.student, "student", config.device, config.dtype)
    sampler = served_sampler(student, config.size, config.num_frames)  # refuses a size it can't serve
    results["settings"]["device"] = str(student.device)
    results["settings"]["dtype"] = str(student.options.dtype).removeprefix("torch.")
    with _progress(config.progress) as bar:
        if config.teacher is not None:
            teacher = open_bundle(config.teacher, "teacher", config.device, config.dtype)
            teacher_settings = teacher_sampler(
                teacher, config.size, config.num_frames, config.teacher_steps, config.teacher_guidance,
                config.negative_prompt,
            )  # fmt: skip
            results["teacher"], clips = _model_run(teacher, teacher_settings, items, config, bar, "teacher")
            results["teacher"]["model"] = describe_bundle(config.teacher)
            sheet.append(("teacher", clips, results["teacher"]["clips"]))
            del teacher
            _release_memory()
        results["student"], clips = _model_run(student, sampler, items, config, bar, "student")
        results["student"]["model"] = describe_bundle(config.student)
        sheet.append(("student", clips, results["student"]["clips"]))
        if results["teacher"] is not None:
            t_acc, s_acc = results["teacher"]["accuracy"], results["student"]["accuracy"]
            results["gap_points"] = {k: 100.0 * (t_acc[k] - s_acc[k]) for k in ATTRIBUTES}
        if config.vae:
            start = time.perf_counter()
            results["vae"] = vae_metrics(student, truth, config.batch_size, bar)
            results["vae"]["wall_s"] = time.perf_counter() - start
        if config.i2v and student.dit.config.image_condition is not None:
            results["i2v"] = i2v_metrics(student, sampler, items, truth, config, bar)
        elif config.i2v:
            results["i2v"] = {"skipped": "the student is text-to-video only (no image condition)"}
    del student
    _release_memory()
    results["thresholds"] = check_thresholds(results)
    results["wall_s"] = time.perf_counter() - started
    results = _jsonable(results)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    (config.out_dir / EVAL_FILE).write_text(json.dumps(results, indent=2) + "\n")
    if config.sheet_clips > 0:
        save_contact_sheet(sheet_rows(sheet, config.sheet_clips), config.out_dir / SHEET_FILE)
    if config.write_card:
        write_model_card(config.student, results)
    logger.info("evaluation written to %s", config.out_dir / EVAL_FILE)
    return results
