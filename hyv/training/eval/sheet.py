"""The evaluation's contact sheet: a PNG of judged clips, a row per clip with the judge's verdict."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont


@dataclass(frozen=True)
class SheetRow:
    lines: list[str]  # text above the frames
    frames: np.ndarray  # (T, H, W, 3) uint8


def save_contact_sheet(
    rows: list[SheetRow], path: str | Path, frames_per_clip: int = 5, scale: int = 2
) -> Path:
    """A PNG: per row its text lines, then ``frames_per_clip`` evenly spaced frames, upscaled.
    Rows may differ in frame size (one row per bucket); each row is as tall as its own frames."""
    if not rows:
        raise ValueError("a contact sheet needs at least one row")
    font = ImageFont.load_default()
    line_h, pad = 13, 4
    text_w = max(int(font.getlength(t)) for r in rows for t in r.lines)
    frames_w = max(min(frames_per_clip, r.frames.shape[0]) * (r.frames.shape[2] * scale + pad) for r in rows)
    width = max(text_w, frames_w) + 2 * pad
    heights = [pad + line_h * len(r.lines) + r.frames.shape[1] * scale + pad for r in rows]
    sheet = Image.new("RGB", (width, sum(heights)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    top = pad
    for row, row_h in zip(rows, heights, strict=True):
        for k, text in enumerate(row.lines):
            color = (255, 120, 120) if "WRONG" in text else (230, 230, 230)
            draw.text((pad, top + k * line_h), text, fill=color, font=font)
        t, h, w, _ = row.frames.shape
        fw, fh = w * scale, h * scale
        picks = np.linspace(0, t - 1, min(frames_per_clip, t)).round().astype(int)
        y = top + line_h * len(row.lines)
        for j, f in enumerate(picks):
            image = Image.fromarray(row.frames[f]).resize((fw, fh), Image.Resampling.NEAREST)
            sheet.paste(image, (pad + j * (fw + pad), y))
        top += row_h
    path = Path(path)
    sheet.save(path)
    return path


def sheet_rows(runs: list[tuple[str, list[np.ndarray], list[dict[str, Any]]]], count: int) -> list[SheetRow]:
    """Rows for ``count`` evenly spread clips: one row per (role, clips, judge records) run."""
    n = len(runs[0][1])
    picks = sorted({j * n // min(count, n) for j in range(min(count, n))})
    rows = []
    for i in picks:
        for role, clips, records in runs:
            rec, judged = records[i], records[i]["judged"]
            verdict = "ok" if not rec["wrong"] else "WRONG " + ", ".join(rec["wrong"])
            motion = "" if judged["motion"] is None else f" {judged['motion']}"  # images: no motion
            text = f"judged: {judged['color']} {judged['shape']}{motion} / {judged['background']}"
            if rec.get("iou") is not None:
                text += f"  IoU {rec['iou']:.2f}, clean {100 * rec['clean']:.0f}%"
            title = f"{role}: {rec['caption']} (seed {rec['seed']})"
            rows.append(SheetRow([title, f"{text}  [{verdict}]"], clips[i]))
    return rows
