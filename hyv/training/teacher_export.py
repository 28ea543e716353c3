"""The bundle's teacher as a served model: the undistilled DiT the student was distilled from (stage
`large`, else `continuations`, else `dit_buckets`, as far as the recipe ran them), sampled with
true CFG over the full flow schedule (50 steps by default), exported beside the 4-step student.

    hyv train export-teacher --run runs/bundle --out weights/hyv-small-teacher

What it writes is a plain bundle (bundle.json, dit/, vae/, text_encoder/, MODEL_CARD.md):

* **limits**: the student's (the same sizes and frame counts: it was trained on the same buckets),
  with `steps` = `teacher_steps` and no distilled schedule, so every step count up to max_steps runs;
* **true CFG**: base training fed the guidance embedding a fixed 1.0 (hyv.training.dit.config). A
  teacher whose embedding still adds exactly zero (its output layer zeroed and frozen) is written
  without it (`guidance_embed` false in dit/config.json): the pipeline then runs true CFG by the DiT
  alone. One whose embedding was trained on (a DiT started from a distilled bundle) keeps it, and its
  DiT header says `guidance_mode: true_cfg`: the pipeline samples it with true CFG and feeds the
  embedding the 1.0 it was trained with (hyv.engine.pipeline, `VideoPipeline.from_dir`);
* **weights** in `dtype` (fp16 by default, like the student); `share_with` replaces the VAE and text
  encoder by relative links to the student's when they are byte-identical (the two bundles then
  cost one DiT more on disk, not a whole bundle).
"""

from __future__ import annotations

import dataclasses
import filecmp
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from hyv.engine.bundle import BUNDLE_FILE, ModelBundle, load_bundle, read_bundle_spec, save_bundle
from hyv.engine.bundle_spec import GUIDANCE_MODE_METADATA_KEY as GUIDANCE_MODE_KEY
from hyv.models import HunyuanVideoDiT

logger = logging.getLogger(__name__)

TEACHER_STEPS = 50
CARD_FILE = "MODEL_CARD.md"
SHARED_COMPONENTS = ("vae", "text_encoder")
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class TeacherExport:
    """What `export_teacher` wrote: the directory, the name, whether the guidance embedding was
    dropped, and which components link to the student's."""

    directory: Path
    name: str
    dropped_guidance_embed: bool
    shared: tuple[str, ...]


def teacher_of_run(run_dir: Path) -> Path:
    """The teacher DiT bundle of a recipe run: the output of the last finished stage of `large` (the
    teacher tuned on the largest bucket), `continuations` (the stage-4 DiT fine-tuned on
    continuation clips) and `dit_buckets`, as recorded in recipe_state.json (a skipped stage
    records the DiT it passed on); else
    `<run>/dit_buckets/bundle`. FileNotFoundError naming what is missing."""
    run_dir = Path(run_dir)
    state_path = run_dir / "recipe_state.json"
    if state_path.is_file():
        stages = json.loads(state_path.read_text()).get("stages", {})
        for name in ("large", "continuations", "dit_buckets"):
            stage = stages.get(name, {})
            if stage.get("finished") and stage.get("output"):
                recorded = Path(stage["output"])
                for candidate in (recorded, run_dir.parent / recorded, run_dir / name / recorded.name):
                    if (candidate / BUNDLE_FILE).is_file():
                        return candidate
    fallback = run_dir / "dit_buckets" / "bundle"
    if (fallback / BUNDLE_FILE).is_file():
        return fallback
    raise FileNotFoundError(
        f"no stage-4 DiT in {run_dir}: stage dit_buckets has not finished ({fallback} has no {BUNDLE_FILE})"
    )


def export_teacher(
    teacher_dir: Path,
    student_dir: Path,
    out_dir: Path,
    name: str | None = None,
    steps: int = TEACHER_STEPS,
    dtype: str = "fp16",
    share_with: Path | None = None,
) -> TeacherExport:
    """Write the teacher bundle at `teacher_dir` as the served model `name` (default: the student's
    name + '-teacher') into `out_dir` (replaced), with the student's limits and `steps` steps of
    true CFG; `share_with`: a bundle whose identical VAE and text encoder the export links to."""
    teacher_dir, student_dir, out_dir = Path(teacher_dir), Path(student_dir), Path(out_dir)
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    student = read_bundle_spec(student_dir)
    if not 1 <= steps <= student.limits.max_steps:
        raise ValueError(
            f"steps must be 1 to the student's max_steps {student.limits.max_steps}, got {steps}"
        )
    if out_dir.resolve() in (teacher_dir.resolve(), student_dir.resolve()):
        raise ValueError(f"out_dir {out_dir} must differ from the teacher and the student bundles")
    name = name or f"{student.name}-teacher"
    bundle = load_bundle(teacher_dir, dtype=torch.float32)
    dropped = _drop_idle_guidance_embed(bundle)
    bundle.spec = dataclasses.replace(
        bundle.spec, name=name, limits=dataclasses.replace(student.limits, steps=steps), trained=True
    )
    for module in (bundle.dit, bundle.vae, bundle.text_encoder):
        if isinstance(module, torch.nn.Module):
            module.to(_DTYPES[dtype])
    if out_dir.exists():
        shutil.rmtree(out_dir)
    metadata = {} if dropped else {GUIDANCE_MODE_KEY: "true_cfg"}
    save_bundle(bundle, out_dir, dit_metadata=metadata)
    shared = _link_identical(out_dir, share_with) if share_with is not None else ()
    write_teacher_card(out_dir, teacher_dir, student_dir, dtype)
    logger.info(
        "exported the teacher %s -> %s (%s, %d steps, guidance embedding %s, shared: %s)",
        teacher_dir,
        out_dir,
        dtype,
        steps,
        "dropped" if dropped else "kept, fed 1.0",
        ", ".join(shared) or "none",
    )
    return TeacherExport(out_dir, name, dropped, shared)


def _drop_idle_guidance_embed(bundle: ModelBundle) -> bool:
    """Replace the DiT by one without a guidance embedding when the embedding adds exactly zero
    (its output layer is all zeros: what base training froze it to); True when dropped."""
    dit = bundle.dit
    if dit.guidance_in is None:
        return False
    out_layer = dit.guidance_in.mlp[-1]
    assert isinstance(out_layer, torch.nn.Linear)
    if torch.count_nonzero(out_layer.weight) or (
        out_layer.bias is not None and torch.count_nonzero(out_layer.bias)
    ):
        return False
    plain = HunyuanVideoDiT(dit.config.replace(guidance_embed=False))
    state = {k: v for k, v in dit.state_dict().items() if not k.startswith("guidance_in.")}
    plain.load_state_dict(state, strict=True)
    bundle.dit = plain.to(next(dit.parameters()).dtype)
    return True


def _link_identical(out_dir: Path, share_with: Path) -> tuple[str, ...]:
    """Replace out_dir's components that are byte-identical to share_with's by relative links."""
    shared = []
    for component in SHARED_COMPONENTS:
        mine, theirs = out_dir / component, Path(share_with) / component
        if not (mine.is_dir() and theirs.is_dir()):
            continue
        names = sorted(p.name for p in mine.iterdir())
        if names != sorted(p.name for p in theirs.iterdir()):
            continue
        if not all(filecmp.cmp(mine / n, theirs / n, shallow=False) for n in names):
            logger.info("%s differs from %s: kept as a copy", mine, theirs)
            continue
        shutil.rmtree(mine)
        mine.symlink_to(os.path.relpath(theirs.resolve(), out_dir.resolve()), target_is_directory=True)
        shared.append(component)
    return tuple(shared)


def write_teacher_card(out_dir: Path, teacher_dir: Path, student_dir: Path, dtype: str) -> None:
    """The teacher bundle's MODEL_CARD.md, from what `out_dir` holds (its limits, whether its DiT
    kept the guidance embedding, which components link to the student's) and the teacher's accuracy
    in the student's eval.json; the recipe writes it again once its eval has run."""
    out_dir, student_dir = Path(out_dir), Path(student_dir)
    spec = read_bundle_spec(out_dir)
    name, limits, steps = spec.name, spec.limits, spec.limits.steps
    student_name = read_bundle_spec(student_dir).name
    dropped = not json.loads((out_dir / "dit" / "config.json").read_text()).get("guidance_embed", False)
    shared = tuple(c for c in SHARED_COMPONENTS if (out_dir / c).is_symlink())
    sizes = ", ".join(f"{w}x{h}" for w, h in limits.buckets) if limits.buckets else "any multiple of 16"
    frames = (
        ", ".join(str(n) for n in limits.frame_counts)
        if limits.frame_counts
        else f"up to {limits.max_frames}"
    )
    guidance = (
        "true CFG by the DiT alone (its guidance embedding, zero since base training, is left out)"
        if dropped
        else "true CFG; the guidance embedding it was trained with is fed 1.0 "
        f"(`{GUIDANCE_MODE_KEY}: true_cfg` in the DiT's header)"
    )
    evaluation = _teacher_eval(student_dir)
    components = f"shared with `{student_name}` ({', '.join(shared)} link there)" if shared else "copied"
    lines = [
        f"# {name}",
        "",
        f"The undistilled teacher of `{student_name}`: the DiT its recipe distilled it from (flow matching",
        "on every bucket, then fine-tuned on continuation clips when the recipe tunes them; before CFG",
        f"and step distillation), served as a model of its own so that the {steps}-step sampler it was",
        "distilled from can be compared with the student and step caching can be measured on a",
        "many-step model.",
        "",
        f"- **Sampling**: {steps} steps of the shifted flow schedule (flow shift {limits.flow_shift:g}), "
        f"guidance {limits.guidance:g} as {guidance}: two DiT forwards per step.",
        f"- **Sizes** {sizes}; **frames** {frames} at {limits.fps} fps (the student's buckets).",
        f"- **Weights**: {dtype} safetensors; VAE and text encoder {components}.",
        f"- **Exported** from `{teacher_dir}` by `hyv train export-teacher`.",
        "",
        "## Evaluation",
        "",
        f"The student's card (`{student_name}/MODEL_CARD.md`) and `eval.json` evaluate this teacher beside",
        f"the student on the held-out attribute combinations ({steps} steps of true CFG):",
        "",
        evaluation,
        "",
    ]
    (out_dir / CARD_FILE).write_text("\n".join(lines))


def _teacher_eval(student_dir: Path) -> str:
    """The teacher's judged accuracy from the student's eval.json, when there is one."""
    path = student_dir / "eval.json"
    try:
        accuracy = json.loads(path.read_text())["teacher"]["accuracy"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"(no teacher results in {path})"
    shown = [
        f"{key} {100 * float(accuracy[key]):.1f}%" for key in ("color", "shape", "motion") if key in accuracy
    ]
    return f"judged accuracy over {int(accuracy.get('n', 0))} clips: " + ", ".join(shown) + "."
