"""Stage 1, CFG distillation into the guidance embedding (HunyuanVideo's cfg-distilled model).

The teacher needs two forwards per sampling step (classifier-free guidance: uncond + g (cond -
uncond)); the student gets g itself, x1000, through its guidance embedding (`guidance_in`, zeroed
and frozen during base training, trained here) and must produce the guided velocity in one forward:

    x_t = (1 - sigma) x0 + sigma noise, x0 from a training clip (T2V, or I2V with its first latent
        frame as the latent_concat condition; images as 1-frame clips), sigma as in base training
    g ~ U[guidance_min, guidance_max] per sample (1..8 by default: the bundle's default 6 inside)
    loss = || student(x_t, sigma, caption, g) - (v_uncond + g (v_cond - v_uncond)) ||^2

The teacher's (v_cond, v_uncond) do not depend on g, so they are computed once per cached sample
(one batched cond+uncond forward) and every training step draws a fresh g for the rows it reuses:
the teacher's cost is paid once while g still varies continuously. The metric is the mean squared
error of the student's one-forward prediction against the teacher's true CFG on held-out noisy
latents at random g; before training the student ignores g (zeroed embedding: it predicts v_cond).
"""

from __future__ import annotations

import json
import logging

import torch
import torch.nn.functional as F

from hyv.engine.sampling import shift_sigmas
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
)
from hyv.training.distill.trainer import DistillTrainer
from hyv.training.dit.data import step_rng

logger = logging.getLogger(__name__)


class CFGDistiller(DistillTrainer):
    stage = "cfg"
    progress_label = "distill cfg"
    metric_name = "MSE of the one-forward student vs the teacher's true CFG"
    plot_title = "CFG distillation loss (MSE to the teacher's guided velocity)"

    def sample_sigmas(self, n: int, generator: torch.Generator) -> torch.Tensor:
        c = self.config
        if c.timestep_sampling == "logit_normal":
            u = torch.sigmoid(
                torch.randn(n, generator=generator, device=self.device) * c.logit_std + c.logit_mean
            )
        else:
            u = torch.rand(n, generator=generator, device=self.device)
        return shift_sigmas(u, self.flow_shift) if self.flow_shift != 1.0 else u

    def make_chunk(self, kind: str, index: int, count: int, stream: int) -> Chunk:
        generator = self.generator(index, 0, stream + self.clips.stream(kind))
        available = self.clips.count(kind)
        indices = torch.randint(0, available, (count,), generator=generator, device=self.device).tolist()
        x0, first, captions = self.clips.take(kind, indices, generator)
        sigma = self.sample_sigmas(count, generator)
        noise = torch.randn(x0.shape, generator=generator, device=self.device)
        s = sigma.view(-1, 1, 1, 1, 1)
        x = (1.0 - s) * x0 + s * noise  # (B, C, t, h, w)
        i2v = torch.rand(count, generator=generator, device=self.device) < self.config.i2v_fraction
        cond = image_condition(first, i2v, x.shape[2])
        text, uncond = split_text(encode_text(self.text_encoder, captions + [""] * count, self.device), count)
        v_cond, v_uncond = self.teacher.cond_uncond(
            with_condition(self.student, x, cond), sigma, text, uncond
        )
        return {
            "x": x,
            "first": first,
            "i2v": i2v,
            "sigma": sigma,
            "guidance": self.sample_guidance(count, generator),  # used by the evaluation set only
            "v_cond": v_cond.half(),
            "v_uncond": v_uncond.half(),
            "captions": captions,
        }

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
                "timestep_sampling",
                "logit_mean",
                "logit_std",
                "eval_samples",
                "teacher_batch",
            ),
            "teacher cfg",
            streams=(100, 200),
        )

    def _predict(self, dit: torch.nn.Module, rows: Chunk, guidance: torch.Tensor) -> torch.Tensor:
        x = rows["x"]
        cond = image_condition(rows["first"], rows["i2v"] > 0.5, x.shape[2])
        text = encode_text(self.text_encoder, rows["captions"], self.device)
        return dit_forward(dit, with_condition(self.student, x, cond), rows["sigma"], text, guidance)

    @staticmethod
    def _target(rows: Chunk, guidance: torch.Tensor) -> torch.Tensor:
        g = guidance.view(-1, 1, 1, 1, 1)
        return rows["v_uncond"] + g * (rows["v_cond"] - rows["v_uncond"])

    def loss(self, step: int, generator: torch.Generator) -> torch.Tensor:
        c = self.config
        # As in base training: one bucket per step shared by all ranks, rows per rank.
        pool, count = self.step_pool(step)
        indices = step_rng(c.seed, step, self.rank, stream=1).integers(0, len(pool["captions"]), count)
        rows = select(pool, indices.tolist(), self.device)
        guidance = self.sample_guidance(count, generator)
        return F.mse_loss(self._predict(self.model, rows, guidance), self._target(rows, guidance))

    @torch.no_grad()
    def evaluate(self, dit: HunyuanVideoDiT) -> float:
        total, n = 0.0, 0
        for rows in self.eval_rows():
            error = F.mse_loss(
                self._predict(dit, rows, rows["guidance"]), self._target(rows, rows["guidance"])
            )
            total += float(error) * len(rows["captions"])
            n += len(rows["captions"])
        return total / n

    def export_metadata(self) -> dict[str, str]:
        return {
            **super().export_metadata(),
            CFG_DISTILLED_KEY: "1",
            GUIDANCE_RANGE_KEY: json.dumps(list(self.guidance_range)),
        }
