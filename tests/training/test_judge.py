"""The evaluation judge on rendered ground truth (clean, noisy, blurred) and the pixel metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hyv.training.data import (
    Attributes,
    ClipSpec,
    SyntheticVideoDataset,
    all_combinations,
    caption,
    heldout_combinations,
    render_clip,
    sample_spec,
    to_uint8,
)
from hyv.training.eval import evaluate, i2v_consistency, judge_clip, psnr, ssim


def _render_all(size: int = 64, frames: int = 17, seed: int = 0) -> list[tuple[np.ndarray, ClipSpec]]:
    rng = np.random.default_rng(seed)
    clips = []
    for a in all_combinations():
        spec = sample_spec(a, rng)
        clips.append((render_clip(spec, frames, size), spec))
    return clips


def _blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of (T, H, W, 3) over H and W, edges replicated; float64 out."""
    r = math.ceil(3 * sigma)
    k = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * sigma**2))
    k /= k.sum()
    x = np.pad(frames.astype(np.float64), ((0, 0), (r, r), (r, r), (0, 0)), mode="edge")
    x = np.lib.stride_tricks.sliding_window_view(x, len(k), axis=1) @ k
    return np.lib.stride_tricks.sliding_window_view(x, len(k), axis=2) @ k


def _degrade(frames: np.ndarray, rng: np.random.Generator, blur: float, noise: float) -> np.ndarray:
    x = _blur(frames, blur) + rng.normal(0.0, noise, frames.shape)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _report(name: str, acc: dict[str, float], failures: list[str]) -> None:
    print(f"{name}: " + ", ".join(f"{k}={v:.4f}" for k, v in acc.items()))
    for line in failures:
        print("  FAIL", line)


def test_judge_reads_every_combination_exactly() -> None:
    failures: list[str] = []
    acc = evaluate(_render_all(), failures=failures)
    _report("clean 64x64x17", acc, failures)
    assert acc["n"] == 294 and acc["n_motion"] == 294
    for key in ("color", "shape", "motion", "background", "all"):
        assert acc[key] == 1.0, key


def test_judge_is_robust_to_blur_and_noise() -> None:
    rng = np.random.default_rng(7)
    clips = [(_degrade(f, rng, blur=1.5, noise=10.0), s) for f, s in _render_all(seed=1)]
    failures: list[str] = []
    acc = evaluate(clips, failures=failures)
    _report("blur 1.5 px + noise 10", acc, failures)
    for key in ("color", "shape", "motion", "background"):
        assert acc[key] >= 0.95, key


def test_judge_without_background_hint_and_with_hint() -> None:
    spec = ClipSpec("magenta", "triangle", "moving up", "gray", 0.5, 0.7, 0.12, 0.4)
    clip = render_clip(spec, 17, 64)
    auto = judge_clip(clip)
    assert (auto.color, auto.shape, auto.motion, auto.background) == spec.attributes
    assert auto.found and auto.valid_frames == 17 and auto.dy == pytest.approx(-0.4, abs=0.02)
    assert judge_clip(clip, background="gray").background == "gray"
    with pytest.raises(ValueError, match="background hint"):
        judge_clip(clip, background="white")


def test_judge_images_and_empty_frames() -> None:
    spec = ClipSpec("cyan", "square", "growing", "black", 0.5, 0.5, 0.15, scale=2.0)
    image = render_clip(spec, 1, 64)
    for frames in (image, image[0]):
        j = judge_clip(frames)
        assert (j.color, j.shape, j.motion) == ("cyan", "square", None)
    acc = evaluate([(image, spec)])
    assert acc["shape"] == 1.0 and math.isnan(acc["motion"]) and acc["n_motion"] == 0
    blank = np.full((5, 32, 32, 3), 128, dtype=np.uint8)
    assert judge_clip(blank) == judge_clip(blank) and not judge_clip(blank).found
    assert judge_clip(blank).background == "gray"
    with pytest.raises(ValueError, match="expected frames"):
        judge_clip(np.zeros((4, 32, 32), dtype=np.uint8))


def test_judge_on_heldout_dataset_subset() -> None:
    """The eval path: dataset tensors -> uint8 -> judge, expected from the caption."""
    ds = SyntheticVideoDataset("heldout", num_frames=17, size=64, image_fraction=0.0, seed=5)
    items = [ds[i] for i in range(0, len(ds), 4)]
    assert {item["spec"].attributes for item in items} <= set(heldout_combinations())
    acc = evaluate([(to_uint8(item["video"]), item["caption"]) for item in items])
    assert acc["all"] == 1.0 and acc["n"] == len(items)


def test_judge_at_other_resolutions() -> None:
    rng = np.random.default_rng(3)
    clips = []
    for size, frames in ((32, 17), (128, 33)):
        for a in all_combinations()[::5]:
            spec = sample_spec(a, rng)
            clips.append((render_clip(spec, frames, size), caption(spec)))
    assert evaluate(clips)["all"] == 1.0


def test_evaluate_counts_mistakes() -> None:
    spec = ClipSpec("red", "circle", "moving right", "black", 0.3, 0.5, 0.12, 0.4)
    clip = render_clip(spec, 17, 64)
    wrong = Attributes("blue", "circle", "moving left", "black")
    failures: list[str] = []
    acc = evaluate([(clip, spec), (clip, wrong)], failures=failures)
    assert acc["color"] == 0.5 and acc["shape"] == 1.0 and acc["motion"] == 0.5 and acc["all"] == 0.5
    assert len(failures) == 1 and "blue" in failures[0]
    with pytest.raises(ValueError, match="at least one"):
        evaluate([])


# --- metrics -------------------------------------------------------------------------------------


def test_psnr_known_values() -> None:
    a = np.zeros((8, 8, 3), dtype=np.uint8)
    assert psnr(a, a) == math.inf
    assert psnr(a, np.full_like(a, 255)) == pytest.approx(0.0)
    assert psnr(np.zeros((4, 4)), np.full((4, 4), 25.5)) == pytest.approx(20.0)  # 20 log10(255/25.5)
    assert psnr(np.zeros(4), np.full(4, 0.1), data_range=1.0) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(np.zeros(3), np.zeros(4))


def test_ssim_known_values() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-12)
    clip = np.stack([img, img[::-1]])
    assert ssim(clip, clip) == pytest.approx(1.0, abs=1e-12)
    # Constant images: sigma = 0, so SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1).
    c1 = (0.01 * 255) ** 2
    a, b = np.full((16, 16), 100.0), np.full((16, 16), 150.0)
    assert ssim(a, b) == pytest.approx((2 * 100 * 150 + c1) / (100**2 + 150**2 + c1))
    # An inverted texture is anti-correlated: SSIM well below zero; mild noise stays high.
    gray = rng.uniform(50, 200, (32, 32))
    assert ssim(gray, 255.0 - gray) < -0.5
    noisy = np.clip(gray + rng.normal(0, 2, gray.shape), 0, 255)
    assert 0.9 < ssim(gray, noisy) < 1.0


def test_i2v_consistency() -> None:
    spec = ClipSpec("yellow", "circle", "moving down", "gray", 0.5, 0.3, 0.12, 0.4)
    clip = render_clip(spec, 17, 64)
    image = render_clip(spec, 1, 64)
    same = i2v_consistency(clip, image)
    assert same["psnr"] == math.inf and same["ssim"] == pytest.approx(1.0)
    shifted = i2v_consistency(clip[1:], image[0])
    assert shifted["psnr"] < 40 and shifted["ssim"] < 1.0
