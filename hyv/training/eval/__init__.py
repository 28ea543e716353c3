"""Automatic evaluation: the pixel-reading judge, the PSNR/SSIM metrics, the held-out evaluation
runner (`hyv train eval`) and the model card."""

from hyv.training.eval.card import THRESHOLDS, check_thresholds, describe_bundle, write_model_card
from hyv.training.eval.judge import Judgement, evaluate, judge_clip
from hyv.training.eval.metrics import i2v_consistency, psnr, ssim
from hyv.training.eval.runner import EvalConfig, InvalidBundleError, evaluate_bundle, heldout_items

__all__ = [
    "THRESHOLDS",
    "EvalConfig",
    "InvalidBundleError",
    "Judgement",
    "check_thresholds",
    "describe_bundle",
    "evaluate",
    "evaluate_bundle",
    "heldout_items",
    "i2v_consistency",
    "judge_clip",
    "psnr",
    "ssim",
    "write_model_card",
]
