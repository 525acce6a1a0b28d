"""How much room the file system has where a path would go (no crbnet imports: the error
types and the resource checks both read it)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

#: Free space below which a file system counts as full (a write there fails as "disk full").
FULL_DISK_BYTES = 1 << 16


def nearest_existing(path: str | Path) -> Path:
    """``path`` or its nearest existing parent folder."""
    probe = Path(os.path.abspath(path))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def free_disk(path: str | Path) -> int:
    """Bytes the user may still write on the file system where ``path`` would go."""
    with contextlib.suppress(OSError):
        st = os.statvfs(nearest_existing(path))
        return st.f_bavail * st.f_frsize
    return 1 << 62


__all__ = ["FULL_DISK_BYTES", "nearest_existing", "free_disk"]
