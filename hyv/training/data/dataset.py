"""`SyntheticVideoDataset`: rendered clips with grammar captions, deterministic by seed and index.

Map-style: item ``i`` of a dataset built with the same arguments is always the same clip. A
fraction ``image_fraction`` of the items (default 0.2, i.e. video:image = 4:1) are images, that is
1-frame clips; the rest have ``num_frames`` frames. Since a batch must hold clips of one length,
use `EqualFramesBatchSampler` (or ``dataset.batch_sampler(...)``) with `collate`::

    ds = SyntheticVideoDataset("train", num_frames=17, size=64)  # size=96, height=64: landscape
    loader = DataLoader(ds, batch_sampler=ds.batch_sampler(8, seed=0), collate_fn=collate)

Items are ``{"video": float32 (3, T, H, W) in [-1, 1], "caption": str, "spec": ClipSpec, "start": float}``.

With ``continuation_starts=(lo, hi)`` every item is a *continuation*: its clip starts at a clip time
drawn uniformly in [lo, hi] (deterministic per item) and runs on at the same speed past t = 1,
where objects leave or outgrow the frame (`render_clip`'s ``start``). Conditioned on their first
frame, such clips teach what extending a video needs: to go on from a state the plain clips only
end in. Their specs are drawn from their own stream, so they are not the plain items re-rendered.
The "train" split draws combinations uniformly from `train_combinations()`; "heldout" cycles
through `heldout_combinations()` (item i has combination i mod 44, so the default length covers
each once); "all" cycles through all 294. The LoRA splits "bouncing_train" (uniform over
`bouncing_train_combinations()`) and "bouncing_heldout" (cycling through
`bouncing_heldout_combinations()`) hold bouncing clips only, the demonstration adapter's data; the
base model's splits never draw them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from hyv.training.data.grammar import (
    Attributes,
    ClipSpec,
    all_combinations,
    bouncing_heldout_combinations,
    bouncing_train_combinations,
    caption,
    heldout_combinations,
    train_combinations,
)
from hyv.training.data.render import render_clip, sample_spec

Split = Literal["train", "heldout", "all", "bouncing_train", "bouncing_heldout"]
# Each split's combinations and its code in the per-item RNG seed (the base splits' codes are fixed:
# changing one would change the base model's data).
_SPLITS: dict[str, tuple[Callable[[], list[Attributes]], int]] = {
    "train": (train_combinations, 0),
    "heldout": (heldout_combinations, 1),
    "all": (all_combinations, 2),
    "bouncing_train": (bouncing_train_combinations, 3),
    "bouncing_heldout": (bouncing_heldout_combinations, 4),
}
_UNIFORM_SPLITS = ("train", "bouncing_train")  # combinations drawn at random; the others cycle
DEFAULT_TRAIN_LENGTH = 100_000


def _unit_hash(*parts: object) -> float:
    """A uniform number in [0, 1) from a SHA-256 of ``parts`` (stable across runs and platforms)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2.0**64


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (3, T, H, W) in [-1, 1]."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float()
    return video / 127.5 - 1.0


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """float (3, T, H, W) in [-1, 1] -> uint8 (T, H, W, 3); the inverse of `to_tensor`."""
    frames = ((video.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return frames.permute(1, 2, 3, 0).cpu().numpy()


class SyntheticVideoDataset(Dataset[dict[str, Any]]):
    """Procedurally rendered clips; see the module docstring."""

    def __init__(
        self,
        split: Split = "train",
        num_frames: int = 17,
        size: int = 64,
        image_fraction: float = 0.2,
        seed: int = 0,
        length: int | None = None,
        height: int | None = None,
        continuation_starts: tuple[float, float] | None = None,
    ) -> None:
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {', '.join(map(repr, _SPLITS))}, got {split!r}")
        combos = _SPLITS[split][0]()
        height = height or size
        if num_frames < 1 or min(size, height) < 8:
            raise ValueError(
                f"need num_frames >= 1 and sides >= 8, got {num_frames} frames of {size}x{height}"
            )
        if not 0.0 <= image_fraction <= 1.0:
            raise ValueError(f"image_fraction must be in [0, 1], got {image_fraction}")
        if continuation_starts is not None:
            lo, hi = continuation_starts
            if not 0.0 <= lo <= hi:
                raise ValueError(f"continuation_starts must be 0 <= lo <= hi, got {continuation_starts}")
        self.continuation_starts = continuation_starts
        self.split: Split = split
        self.combinations: list[Attributes] = combos
        self.num_frames = num_frames
        self.size = size  # the width; `height` equals it for square clips
        self.height = height
        self.image_fraction = image_fraction
        self.seed = seed
        self.length = (
            length
            if length is not None
            else (DEFAULT_TRAIN_LENGTH if split in _UNIFORM_SPLITS else len(combos))
        )
        if self.length < 1:
            raise ValueError(f"length must be >= 1, got {self.length}")

    def __len__(self) -> int:
        return self.length

    def is_image(self, index: int) -> bool:
        """Whether item ``index`` is a 1-frame clip; cheap (no rendering)."""
        if self.num_frames == 1:
            return True
        return _unit_hash("image", self.split, self.seed, index) < self.image_fraction

    def frames_of(self, index: int) -> int:
        return 1 if self.is_image(index) else self.num_frames

    def spec(self, index: int) -> ClipSpec:
        """The clip spec of item ``index`` (deterministic)."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for length {self.length}")
        stream = [self.seed, _SPLITS[self.split][1], index]
        rng = np.random.default_rng(stream if self.continuation_starts is None else [*stream, 1])
        if self.split in _UNIFORM_SPLITS:
            attrs = self.combinations[int(rng.integers(len(self.combinations)))]
        else:
            attrs = self.combinations[index % len(self.combinations)]
        return sample_spec(attrs, rng, aspect=self.size / self.height)

    def start_of(self, index: int) -> float:
        """The clip time item ``index`` starts at: 0 unless this is a continuation dataset."""
        if self.continuation_starts is None:
            return 0.0
        lo, hi = self.continuation_starts
        return lo + (hi - lo) * _unit_hash("start", self.split, self.seed, index)

    def caption_of(self, index: int) -> str:
        """Item ``index``'s caption, without rendering it."""
        return caption(self.spec(index))

    def batch_sampler(
        self, batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = True
    ) -> EqualFramesBatchSampler:
        """An `EqualFramesBatchSampler` over this dataset."""
        return EqualFramesBatchSampler(self, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)

    def __getitem__(self, index: int) -> dict[str, Any]:
        spec, start = self.spec(index), self.start_of(index)
        frames = render_clip(spec, self.frames_of(index), self.size, self.height, start=start)
        return {"video": to_tensor(frames), "caption": caption(spec), "spec": spec, "start": start}


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch items of equal frame count: video (B, 3, T, H, W), caption list[str], spec list."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    shapes = {tuple(item["video"].shape) for item in items}
    if len(shapes) != 1:
        raise ValueError(f"collate needs clips of one shape (C, T, H, W), got {sorted(shapes)}")
    return {
        "video": torch.stack([item["video"] for item in items]),
        "caption": [item["caption"] for item in items],
        "spec": [item["spec"] for item in items],
    }


class EqualFramesBatchSampler(Sampler[list[int]]):
    """Batches of indices whose items share a frame count (all videos or all images).

    Each epoch shuffles (seeded by ``seed`` and the epoch; call `set_epoch`) the video indices
    and the image indices separately, cuts both into batches and interleaves the batches in a
    shuffled order, so about ``image_fraction`` of the batches are image batches.
    """

    def __init__(
        self,
        dataset: SyntheticVideoDataset,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        images = [i for i in range(len(dataset)) if dataset.is_image(i)]
        image_set = set(images)
        self._groups = [[i for i in range(len(dataset)) if i not in image_set], images]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches: list[list[int]] = []
        for group in self._groups:
            order = [group[i] for i in rng.permutation(len(group))] if self.shuffle else list(group)
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                if len(batch) == self.batch_size or (batch and not self.drop_last):
                    batches.append(batch)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        total = 0
        for group in self._groups:
            full, rest = divmod(len(group), self.batch_size)
            total += full + (1 if rest and not self.drop_last else 0)
        return total
