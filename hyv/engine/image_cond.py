"""The conditioning image for image-to-video: decode, fit to the target size, build the latents.

Fit rule (documented for users): the image is scaled, keeping its aspect ratio, until it COVERS the
target (scale = max(width / w, height / h), Lanczos), then center-cropped to exactly width x height.
Nothing is letterboxed; an image of another aspect ratio loses its outer edges symmetrically.
"""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

if TYPE_CHECKING:  # torch is imported where it is used: the API validates images without it
    import torch

MAX_IMAGE_PIXELS = 64_000_000  # refuse decompression bombs well before Pillow's own limit


def load_image(data: bytes) -> Image.Image:
    """Decode image bytes to RGB; ValueError naming the problem for anything unusable."""
    if not data:
        raise ValueError("image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ValueError(f"image is {width}x{height}, over the limit of {MAX_IMAGE_PIXELS} pixels")
            if width < 1 or height < 1:
                raise ValueError(f"image has no pixels ({width}x{height})")
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:  # fmt: skip
        raise ValueError(f"image could not be read ({type(exc).__name__}: {exc})") from exc
    # First frame of an animation; palette/CMYK/16-bit/alpha all become 8-bit RGB.
    return image.convert("RGB")


def fit_image(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover width x height, then center-crop (the rule in the module docstring)."""
    scale = max(width / image.width, height / image.height)
    resized = image.resize(
        (max(width, round(image.width * scale)), max(height, round(image.height * scale))),
        Image.Resampling.LANCZOS,
    )
    left = (resized.width - width) // 2
    top = (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


def image_to_video_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image -> (1, 3, 1, H, W) in [-1, 1]: a one-frame video for the VAE."""
    import torch

    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32))  # (H, W, 3) in [0, 255]
    return (pixels / 127.5 - 1.0).permute(2, 0, 1)[None, :, None]  # (1, 3, 1, H, W)
