"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file the package writes for later reading (ledger heads, checkpoints, teachers, reports,
summaries) goes through `atomic_write_with`: a temp file beside the target, fsync, rename.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from fedsa_secure.errors import KeyMaterialError


def atomic_write_with(path: Path, write: Callable[[IO[bytes]], Any], mode: int = 0o644) -> None:
    """Call `write` on a temp file beside `path`, fsync it, and rename it over `path`.

    `mode`: the file's permissions, set before anything is written (0o600 for a private key or model).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def atomic_write(path: Path, text: str) -> None:
    """`text` (UTF-8), written atomically."""
    atomic_write_with(path, lambda handle: handle.write(text.encode("utf-8")))


def write_json_atomic(path: Path, payload: object) -> None:
    """`payload` as indented JSON, written atomically."""
    atomic_write(path, json.dumps(payload, indent=1))


def atomic_torch_save(obj: object, path: Path, mode: int = 0o644) -> None:
    """`torch.save(obj)`, written atomically (read it back with `torch.load(..., weights_only=True)`)."""
    import torch  # here, not at the top: the JSON helpers serve commands that never load torch

    atomic_write_with(path, lambda handle: torch.save(obj, handle), mode)


def read_secret(path: Path) -> bytes:
    """The bytes of a file that must stay private to its owner; refused if group or others may read it (as OpenSSH does)."""
    path = Path(path)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise KeyMaterialError(
            f"{path} holds a secret but is readable by group or others (mode {mode:04o}); run: chmod 600 {path}"
        )
    return path.read_bytes()


def create_secret(path: Path, data: bytes) -> None:
    """Write `data` to a new file readable by its owner only (fails if the file exists)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
