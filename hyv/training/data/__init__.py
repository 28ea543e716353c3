"""Synthetic training data: the caption grammar, the clip renderer and the dataset."""

from hyv.training.data.dataset import (
    EqualFramesBatchSampler,
    SyntheticVideoDataset,
    collate,
    to_tensor,
    to_uint8,
)
from hyv.training.data.grammar import (
    BACKGROUND_RGB,
    BACKGROUNDS,
    COLOR_RGB,
    COLORS,
    MOTIONS,
    SHAPES,
    Attributes,
    ClipSpec,
    all_combinations,
    caption,
    heldout_combinations,
    is_heldout,
    parse_caption,
    train_combinations,
)
from hyv.training.data.render import render_clip, sample_spec

__all__ = [
    "BACKGROUNDS",
    "BACKGROUND_RGB",
    "COLORS",
    "COLOR_RGB",
    "MOTIONS",
    "SHAPES",
    "Attributes",
    "ClipSpec",
    "EqualFramesBatchSampler",
    "SyntheticVideoDataset",
    "all_combinations",
    "caption",
    "collate",
    "heldout_combinations",
    "is_heldout",
    "parse_caption",
    "render_clip",
    "sample_spec",
    "to_tensor",
    "to_uint8",
    "train_combinations",
]
