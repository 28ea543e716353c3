"""Pixel metrics: PSNR and SSIM, plus the I2V first-frame consistency built on them.

SSIM follows Wang et al. 2004: an 11x11 Gaussian window (sigma 1.5) applied separably in
"valid" mode (no padding, as in the reference MATLAB code), K1 = 0.01, K2 = 0.03, averaged over
the map. Color inputs are converted to luma first (ITU-R BT.601: Y = 0.299 R + 0.587 G + 0.114 B);
clips are scored frame by frame and averaged. Inputs smaller than the window use a window
clipped to the image size.
"""

from __future__ import annotations

import math

import numpy as np

WINDOW_SIZE = 11
WINDOW_SIGMA = 1.5
K1, K2 = 0.01, 0.03
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
    if x.size == 0:
        raise ValueError("empty input")
    return x, y


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB over all elements; ``inf`` for identical inputs.

    ``data_range`` is the peak value: 255 for uint8, 1.0 (or 2.0 for [-1, 1]) for floats."""
    x, y = _pair(a, b)
    mse = float(np.mean((x - y) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def _gaussian(size: int, sigma: float) -> np.ndarray:
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(r**2) / (2.0 * sigma**2))
    return g / g.sum()


def _filter(img: np.ndarray, gy: np.ndarray, gx: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of the last two axes."""
    rows = np.lib.stride_tricks.sliding_window_view(img, len(gy), axis=-2) @ gy
    return np.lib.stride_tricks.sliding_window_view(rows, len(gx), axis=-1) @ gx


def _to_luma(x: np.ndarray, channels_last: bool) -> np.ndarray:
    return x @ LUMA if channels_last else x


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Mean SSIM of two images or clips of the same shape.

    Accepts (H, W) gray, (H, W, 3) RGB, or (T, H, W, 3) / (T, H, W) clips (mean over frames).
    RGB is reduced to BT.601 luma before scoring. 1.0 for identical inputs."""
    x, y = _pair(a, b)
    channels_last = x.ndim >= 3 and x.shape[-1] == 3
    x, y = _to_luma(x, channels_last), _to_luma(y, channels_last)
    if x.ndim not in (2, 3):
        raise ValueError(f"expected (H, W), (H, W, 3), (T, H, W) or (T, H, W, 3), got {a.shape}")
    gy = _gaussian(min(WINDOW_SIZE, x.shape[-2]), WINDOW_SIGMA)
    gx = _gaussian(min(WINDOW_SIZE, x.shape[-1]), WINDOW_SIGMA)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    mu_x, mu_y = _filter(x, gy, gx), _filter(y, gy, gx)
    var_x = _filter(x * x, gy, gx) - mu_x**2
    var_y = _filter(y * y, gy, gx) - mu_y**2
    cov = _filter(x * y, gy, gx) - mu_x * mu_y
    num = (2.0 * mu_x * mu_y + c1) * (2.0 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return float(np.mean(num / den))


def i2v_consistency(frames: np.ndarray, image: np.ndarray, data_range: float = 255.0) -> dict[str, float]:
    """How well a generated clip's first frame matches the conditioning image.

    ``frames`` (T, H, W, 3), ``image`` (H, W, 3) (or (1, H, W, 3)); returns {"psnr", "ssim"}."""
    first = np.asarray(frames)[0]
    img = np.asarray(image)
    if img.ndim == 4:
        img = img[0]
    return {"psnr": psnr(first, img, data_range), "ssim": ssim(first, img, data_range)}
