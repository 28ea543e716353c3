"""`ConfigIO`: the dict round trip every training config (a dataclass) shares.

`to_dict` gives what checkpoints and JSON files store (paths as strings, tuples as lists, as JSON
would turn them anyway, so a saved config and a fresh one compare equal on resume); `from_dict`
names any field it does not know instead of a bare TypeError from the constructor.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Self


class ConfigIO:
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)  # type: ignore[call-overload]
        for name, value in data.items():
            if isinstance(value, Path):
                data[name] = str(value)
            elif isinstance(value, tuple):
                data[name] = list(value)
        return data  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}")
        return cls(**data)

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]
