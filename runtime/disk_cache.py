"""Kiln's cache of compiled code on disk: one file per entry, checksummed, written whole.

Both compiled CPU objects (`runtime.cpu`) and CUDA cubins (`backends.cuda.nvrtc`) are kept here,
under `KILN_CACHE_DIR` (default ~/.cache/kiln; "off" keeps nothing). An entry that fails its
checksum (truncated, overwritten) is deleted and reads as missing, so it is rebuilt; a disk that
cannot be written costs speed, not correctness.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CACHE_ENVIRONMENT_VARIABLE = "KILN_CACHE_DIR"


def cache_path(name: str) -> Path | None:
    """Where the entry `name` lives, or None when caching is off."""
    location = os.environ.get(CACHE_ENVIRONMENT_VARIABLE) or str(Path.home() / ".cache" / "kiln")
    return None if location == "off" else Path(location) / name


def read_entry(name: str) -> bytes | None:
    """The data stored under `name`, or None (missing, unreadable, or corrupt: then deleted)."""
    path = cache_path(name)
    try:
        content = path.read_bytes() if path is not None else b""
    except OSError:
        return None
    digest, data = content[:32], content[32:]
    if len(digest) == 32 and hashlib.sha256(data).digest() == digest:
        return data
    if content:
        discard_entry(name)
    return None


def write_entry(name: str, data: bytes) -> None:
    path = cache_path(name)
    if path is None:
        return
    try:  # written whole then renamed, so a reader never sees half a file
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        partial.write_bytes(hashlib.sha256(data).digest() + data)
        partial.replace(path)
    except OSError:
        pass


def discard_entry(name: str) -> None:
    """Delete an entry whose data its reader cannot use."""
    path = cache_path(name)
    if path is not None:
        path.unlink(missing_ok=True)
