"""Automatic evaluation: the pixel-reading judge and the PSNR/SSIM metrics."""

from training.eval.judge import Judgement, evaluate, judge_clip
from training.eval.metrics import i2v_consistency, psnr, ssim

__all__ = ["Judgement", "evaluate", "i2v_consistency", "judge_clip", "psnr", "ssim"]
