"""Shared by the benchmark scripts: describe the machine and rewrite one section of
docs/benchmarks.md, leaving the other sections as they are."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
from pathlib import Path

import torch

DOC = Path("docs/benchmarks.md")
HEADER = (
    "# Benchmarks\n\n"
    "Written by the scripts in `benchmarks/`; each section names the machine it ran on. "
    "Ratios compare against a baseline measured in the same run.\n"
)


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"{cpu}, {os.cpu_count()} cores"]
    if torch.cuda.is_available():
        parts.append(torch.cuda.get_device_name(0))
    else:
        parts.append("no GPU")
    return "; ".join(parts)


def update_benchmarks_doc(section: str, body: str, doc: Path | None = None) -> None:
    """Replace (or append) the `## section` block of docs/benchmarks.md (or of `doc`)."""
    doc = doc or DOC
    text = doc.read_text() if doc.exists() else HEADER
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    block = f"## {section}\n\n_Run {stamp}._\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = (
        pattern.sub(lambda _: block + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    )
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text.rstrip() + "\n")
