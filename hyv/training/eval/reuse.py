"""The teacher's results carried over from an earlier evaluation (`EvalConfig.teacher_results`).

The teacher is the costly half of an evaluation (50 steps with true CFG: 100 DiT forwards a clip
against the student's 4-6), and it does not change while the student is retrained. An earlier
``eval.json`` of the same teacher, with the same eval set and teacher sampler, can give its
results; they are reused only if

* the settings that decide the teacher's clips match (seed, held-out combinations, samples per
  combination, batch, teacher steps, guidance and negative prompt, device and dtype),
* every reused bucket's clips are the same captions with the same noise seeds, and
* the teacher bundle given now reproduces the earlier results: it is regenerated at the cheapest
  bucket (fewest DiT tokens) and every clip must be judged the same, its IoU and clean-frame
  fraction within `TOLERANCE`. A different teacher, or the same one at another precision, fails
  this and the evaluation stops before any other work.

Buckets the earlier file lacks are generated as usual.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Largest difference allowed between a regenerated clip's IoU (or clean-frame fraction) and the
# earlier one: batched float32 sampling is reproducible to far better than this on one machine, while
# another teacher moves whole clips' judgements.
TOLERANCE = 0.005

# EvalConfig fields that decide which clips the teacher generates and how.
_SETTINGS = (
    "seed",
    "samples_per_combination",
    "combinations",
    "size",
    "num_frames",
    "batch_size",
    "teacher_steps",
    "teacher_guidance",
    "negative_prompt",
)


def load_teacher_results(
    path: Path, settings: dict[str, Any], buckets: Sequence[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """The teacher section of each bucket of ``path`` (an eval.json) that this evaluation can reuse,
    by bucket name. ``settings`` is this evaluation's eval.json "settings"; ``buckets`` its bucket
    records, each with "bucket", "batch_size" and "items" ((caption, noise seed) pairs).

    Raises ValueError naming the first setting or clip that differs, or a file without teacher
    results."""
    try:
        earlier = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ValueError(f"teacher results {path}: no such file") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"teacher results {path}: not JSON ({exc})") from exc
    before = earlier.get("settings", {})
    for key in (*_SETTINGS, "device", "dtype", "combinations_evaluated"):
        if before.get(key) != settings.get(key):
            raise ValueError(
                f"teacher results {path}: {key} was {before.get(key)!r} there, {settings.get(key)!r} here"
            )
    sections = {b["bucket"]: b for b in earlier.get("buckets", []) if b.get("teacher")}
    reused: dict[str, dict[str, Any]] = {}
    for bucket in buckets:
        name = bucket["bucket"]
        if name not in sections:
            continue
        old = sections[name]
        if old.get("batch_size") != bucket["batch_size"]:
            raise ValueError(
                f"teacher results {path}: bucket {name} was generated {old.get('batch_size')} clips a "
                f"batch there, {bucket['batch_size']} here"
            )
        clips = old["teacher"]["clips"]
        pairs = [(c["caption"], c["seed"]) for c in clips]
        if pairs != [tuple(item) for item in bucket["items"]]:
            raise ValueError(f"teacher results {path}: bucket {name} holds other clips (captions or seeds)")
        accuracy = {k: math.nan if v is None else v for k, v in old["teacher"]["accuracy"].items()}
        reused[name] = {**old["teacher"], "accuracy": accuracy}  # NaN (no motion in images) was null
    if not reused:
        raise ValueError(f"teacher results {path}: no teacher results at any of the buckets evaluated")
    return reused


def check_reproduced(
    earlier: dict[str, Any], regenerated: dict[str, Any], bucket: str, path: Path
) -> dict[str, float]:
    """Compare the teacher regenerated at ``bucket`` with its earlier results, clip by clip.

    Returns the largest IoU and clean-frame differences; raises ValueError naming the first clip
    judged otherwise or measured beyond `TOLERANCE`."""
    worst = {"iou": 0.0, "clean": 0.0}
    for index, (old, new) in enumerate(zip(earlier["clips"], regenerated["clips"], strict=True)):
        if old["judged"] != new["judged"]:
            raise ValueError(
                f"the teacher does not reproduce {path} at bucket {bucket}: clip {index} "
                f"({old['caption']!r}) was judged {old['judged']}, now {new['judged']}"
            )
        for key in worst:
            difference = abs(float(old[key]) - float(new[key]))
            if difference > TOLERANCE:
                raise ValueError(
                    f"the teacher does not reproduce {path} at bucket {bucket}: clip {index} "
                    f"({old['caption']!r}) {key} was {old[key]:.4f}, now {new[key]:.4f}"
                )
            worst[key] = max(worst[key], difference)
    return worst
