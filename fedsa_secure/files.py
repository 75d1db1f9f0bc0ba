"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
from pathlib import Path


def atomic_write(path: Path, text: str) -> None:
    """Write via a temp file beside `path`, fsync and rename."""
    temp = path.with_name(f".{path.name}.tmp")
    with open(temp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def write_json_atomic(path: Path, payload: object) -> None:
    """`payload` as indented JSON, written atomically."""
    atomic_write(path, json.dumps(payload, indent=1))
