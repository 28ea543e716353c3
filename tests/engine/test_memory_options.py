"""hyv/engine/memory_options.py: the torch-free words of the memory options agree with the code that
acts on them (hyv.kernels.attention's backend names), and partial VAE tiles check their values."""

from __future__ import annotations

import re

import pytest

from hyv.engine.memory_options import (
    ATTENTION_BACKEND_ALIASES,
    ATTENTION_BACKENDS,
    VAETileSizes,
    attention_backend_name,
)
from hyv.kernels.attention import _ALIASES, BACKENDS, canonical_backend
from hyv.models import VAETiling


def test_the_backend_names_are_the_kernels_own() -> None:
    assert ATTENTION_BACKENDS == BACKENDS
    assert ATTENTION_BACKEND_ALIASES == _ALIASES
    for name in [*BACKENDS, *_ALIASES, "FLASH", " Torch "]:
        assert attention_backend_name(name) == canonical_backend(name), name


@pytest.mark.parametrize("name", [None, "", "auto", "AUTO"])
def test_automatic(name: str | None) -> None:
    assert attention_backend_name(name) is None


def test_an_unknown_backend_is_refused_by_both() -> None:
    with pytest.raises(
        ValueError, match=re.escape("unknown attention backend 'cudnn'; choose one of auto, fa3")
    ):
        attention_backend_name("cudnn")
    with pytest.raises(ValueError, match="unknown attention backend 'cudnn'"):
        canonical_backend("cudnn")


def test_vae_tile_sizes_fill_in_the_vaes_own() -> None:
    own = VAETiling(sample_size=256, sample_frames=64, overlap=0.25)
    assert VAETileSizes().apply(own) == own and VAETileSizes().is_default()
    assert VAETileSizes(sample_frames=16).apply(own) == VAETiling(256, 16, 0.25)
    assert VAETileSizes(128, 32, 0.5).apply(own) == VAETiling(128, 32, 0.5)
    with pytest.raises(
        ValueError, match=re.escape("do not fit this VAE: tile sample_frames must be a positive")
    ):
        VAETileSizes(sample_frames=30).apply(own)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"sample_size": 0}, "VAE tile sample_size must be a positive int, got 0"),
        ({"sample_frames": 2.5}, "VAE tile sample_frames must be a positive int, got 2.5"),
        ({"overlap": 1.0}, "VAE tile overlap must be in [0, 1), got 1.0"),
    ],
)
def test_bad_vae_tile_sizes(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        VAETileSizes(**fields)
