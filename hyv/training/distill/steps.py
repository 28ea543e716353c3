"""Stage 2, step distillation to <= 6 steps: phased trajectory distillation (as in PCM).

The teacher integrates the probability-flow ODE with its full schedule (`teacher_steps` Euler steps,
guidance g through its distilled embedding, or true CFG for a teacher that has none) from Gaussian
noise, for captions and I2V first frames of training clips; its states are kept at the student's
phase boundaries, the sigmas of `flow_schedule(student_steps, student_shift)`. The teacher's grid
cuts every phase into teacher_steps / student_steps steps (with student_shift = flow_shift, the
default, it is exactly `flow_schedule(teacher_steps, flow_shift)`, the teacher's own sampler; a
smaller student_shift gives the last, detail-forming phase a shorter jump). The student must cross
each phase in one Euler step, i.e. predict the phase's average velocity:

    phase k: x_k at sigma_k -> x_{k+1} at sigma_{k+1}   (teacher states)
    loss = || student(x_k, sigma_k, caption, g) - (x_{k+1} - x_k) / (sigma_{k+1} - sigma_k) ||^2

so the pipeline's Euler update `x + (sigma_{k+1} - sigma_k) v` lands exactly on the teacher's next
boundary. The schedule is written to the DiT metadata ("sampling_sigmas"), which the pipeline reads
and uses with no extra options; the bundle's default steps match it.

Why this method, for ~20 minutes on 2 CPU cores:

* The teacher's cost is paid once: trajectories are cached (~4 min for 768 of 24 steps with a
  10M-parameter DiT) and regressed on for any number of epochs; a resumed run reuses them.
* It is plain supervised regression with a fixed target: no target network or EMA bootstrapping
  (consistency models, LCM), whose targets only become right after many steps; no fake-score
  network and generator/critic game (DMD), which doubles the trained parameters and is fragile
  at this budget; no sequence of rounds (progressive distillation halves the steps per round,
  log2(24/4) ~ 3 rounds each needing its own training and compounding their errors).
* The student's inference is the pipeline's ordinary Euler sampler on a fixed schedule, one
  forward per step with embedded guidance, T2V and I2V alike; nothing in the engine changes.
* Deterministic ODE endpoints make the phase target exact (PCM's observation): the student need
  not learn the whole-trajectory jump, only <= 6 short ones, which a small model fits well.

The metric is the mean squared error between the student's `student_steps`-step sample and the
teacher's full-schedule endpoint from the same noise, on held-out trajectories.
"""

from __future__ import annotations

import json
import logging

import torch
import torch.nn.functional as F

from hyv.engine.pipeline import SCHEDULE_METADATA_KEY
from hyv.engine.sampling import flow_schedule, shift_sigmas
from hyv.models import HunyuanVideoDiT
from hyv.training.distill.common import (
    CFG_DISTILLED_KEY,
    GUIDANCE_RANGE_KEY,
    Chunk,
    dit_forward,
    encode_text,
    image_condition,
    select,
    split_text,
    with_condition,
    with_continuations,
)
from hyv.training.distill.trainer import DistillTrainer
from hyv.training.dit.data import step_rng

logger = logging.getLogger(__name__)

STUDENT_STEPS_KEY = "distill_student_steps"
TEACHER_STEPS_KEY = "distill_teacher_steps"


class StepDistiller(DistillTrainer):
    stage = "steps"
    progress_label = "distill steps"
    metric_name = "MSE of the student's few-step sample vs the teacher's full-schedule endpoint"
    plot_title = "Step distillation loss (MSE to the teacher's phase velocity)"

    @property
    def student_shift(self) -> float:
        shift = self.config.student_shift
        return shift if shift is not None else self.flow_shift

    @property
    def student_sigmas(self) -> torch.Tensor:
        """(student_steps + 1,) float64, from 1 down to 0."""
        return flow_schedule(self.config.student_steps, self.student_shift)

    def teacher_sigmas(self) -> torch.Tensor:
        """(teacher_steps + 1,) float64: every student phase cut into teacher_steps / student_steps
        teacher steps, evenly in the teacher's unshifted time, so the student's boundaries are on the
        grid; with student_shift == flow_shift this is exactly flow_schedule(teacher_steps, flow_shift)."""
        c = self.config
        k = self.flow_shift
        bounds = self.student_sigmas
        u = bounds / (k - (k - 1) * bounds)  # inverse of shift_sigmas
        per_phase = c.teacher_steps // c.student_steps
        pieces = [
            torch.linspace(float(u[i]), float(u[i + 1]), per_phase + 1, dtype=torch.float64)[:-1]
            for i in range(c.student_steps)
        ]
        grid = torch.cat([*pieces, u[-1:]])
        sigmas = shift_sigmas(grid, k)
        sigmas[::per_phase] = bounds  # exact boundaries, no round-off
        return sigmas

    def _trajectory(
        self, noise: torch.Tensor, cond: torch.Tensor, text: object, uncond: object, guidance: torch.Tensor
    ) -> torch.Tensor:
        """Teacher states at the student's phase boundaries (B, student_steps + 1, C, t, h, w)."""
        c = self.config
        sigmas = self.teacher_sigmas()
        every = c.teacher_steps // c.student_steps
        x = noise
        states = [x]
        for i in range(c.teacher_steps):
            sigma = torch.full((x.shape[0],), float(sigmas[i]), device=self.device)
            v = self.teacher.guided(with_condition(self.student, x, cond), sigma, text, uncond, guidance)  # type: ignore[arg-type]
            x = (
                x.double() + (sigmas[i + 1] - sigmas[i]) * v.double()
            ).float()  # as hyv.engine.sampling.euler_denoise
            if (i + 1) % every == 0:
                states.append(x)
        return torch.stack(states, dim=1)

    def make_chunk(self, kind: str, index: int, count: int, stream: int) -> Chunk:
        generator = self.generator(index, 0, stream + self.clips.stream(kind))
        available = self.clips.count(kind)
        indices = torch.randint(0, available, (count,), generator=generator, device=self.device).tolist()
        x0, first, captions = self.clips.take(kind, indices, generator)
        noise = torch.randn(x0.shape, generator=generator, device=self.device)  # (B, C, t, h, w)
        i2v = torch.rand(count, generator=generator, device=self.device) < self.config.i2v_fraction
        guidance = self.sample_guidance(count, generator)
        if x0.shape[2] > 1:  # video buckets: continuations (the extension's image-to-video)
            first, captions, i2v = with_continuations(
                self.clips, kind, self.config.continuation_fraction, (first, captions, i2v), generator
            )
        cond = image_condition(first, i2v, x0.shape[2])
        text, uncond = split_text(encode_text(self.text_encoder, captions + [""] * count, self.device), count)
        states = self._trajectory(noise, cond, text, uncond, guidance)
        return {"states": states, "first": first, "i2v": i2v, "guidance": guidance, "captions": captions}

    def build_pools(self) -> None:
        self.build_teacher_pools(
            (
                "seed",
                "size",
                "num_frames",
                "buckets",
                "cache_videos",
                "cache_images",
                "teacher_samples",
                "image_fraction",
                "i2v_fraction",
                "continuation_fraction",
                "cache_continuations",
                "continuation_starts",
                "eval_samples",
                "teacher_batch",
                "student_steps",
                "teacher_steps",
                "student_shift",
            ),
            "teacher trajectories",
            streams=(300, 400),
            cfg_distilled=self.teacher.cfg_distilled,
        )

    def _velocity(
        self, dit: torch.nn.Module, rows: Chunk, x: torch.Tensor, sigma: torch.Tensor
    ) -> torch.Tensor:
        cond = image_condition(rows["first"], rows["i2v"] > 0.5, x.shape[2])
        text = encode_text(self.text_encoder, rows["captions"], self.device)
        return dit_forward(dit, with_condition(self.student, x, cond), sigma, text, rows["guidance"])

    def loss(self, step: int, generator: torch.Generator) -> torch.Tensor:
        c = self.config
        pool, count = self.step_pool(step)
        rng = step_rng(c.seed, step, self.rank, stream=1)
        indices = rng.integers(0, len(pool["captions"]), count).tolist()
        rows = select(pool, indices, self.device)
        phase = torch.from_numpy(rng.integers(0, c.student_steps, count)).to(self.device)
        sigmas = self.student_sigmas.to(self.device)
        arange = torch.arange(count, device=self.device)
        x_start = rows["states"][arange, phase]  # (B, C, t, h, w)
        x_end = rows["states"][arange, phase + 1]
        delta = (sigmas[phase + 1] - sigmas[phase]).float().view(-1, 1, 1, 1, 1)
        target = (x_end - x_start) / delta
        prediction = self._velocity(self.model, rows, x_start, sigmas[phase].float())
        return F.mse_loss(prediction, target)

    @torch.no_grad()
    def sample(self, dit: torch.nn.Module, rows: Chunk) -> torch.Tensor:
        """The student's few-step sample from the rows' noise, as the pipeline integrates it."""
        sigmas = self.student_sigmas
        x = rows["states"][:, 0]
        for k in range(len(sigmas) - 1):
            sigma = torch.full((x.shape[0],), float(sigmas[k]), device=self.device)
            v = self._velocity(dit, rows, x, sigma)
            x = (x.double() + (sigmas[k + 1] - sigmas[k]) * v.double()).float()
        return x

    @torch.no_grad()
    def evaluate(self, dit: HunyuanVideoDiT) -> float:
        total, n = 0.0, 0
        for rows in self.eval_rows():
            error = F.mse_loss(self.sample(dit, rows), rows["states"][:, -1])
            total += float(error) * len(rows["captions"])
            n += len(rows["captions"])
        return total / n

    def export_metadata(self) -> dict[str, str]:
        return {
            **super().export_metadata(),
            SCHEDULE_METADATA_KEY: json.dumps([float(s) for s in self.student_sigmas]),
            CFG_DISTILLED_KEY: "1",
            GUIDANCE_RANGE_KEY: json.dumps(list(self.guidance_range)),
            STUDENT_STEPS_KEY: str(self.config.student_steps),
            TEACHER_STEPS_KEY: str(self.config.teacher_steps),
        }

    def export_limits_steps(self) -> int:
        return self.config.student_steps
