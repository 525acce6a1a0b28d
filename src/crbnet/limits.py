"""Resource checks before work: memory and disk space that a user-set size will need.

Every size a user can set (samples, batch, grid × realizations, network width and depth, image
shape, dictionary atoms) is turned into the bytes it will need *before* anything large is
allocated; a size the machine cannot hold is refused with one line saying what it would need
and what is there (:class:`ResourceError`, an input error: exit code 2). A disk that is
already full (less than 64 kB free) is the environment's refusal instead: ``OSError`` "disk
full", exit code 1, as a write there would give. The estimates count
the arrays a run keeps, not every temporary, so they refuse the impossible and never a run that
fits; they are lower bounds, not promises.

Memory available is the smallest of: the kernel's ``MemAvailable``, the room left under the
process's cgroup limit (containers), and the room left under ``RLIMIT_AS``; on a CUDA device,
the free device memory. Disk space is ``statvfs``'s space available to the user at the nearest
existing folder of the output.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import resource
from pathlib import Path

from crbnet.disk_space import FULL_DISK_BYTES, free_disk, nearest_existing  # noqa: F401
from crbnet.errors import InputError



class ResourceError(InputError):
    """A size the machine cannot hold (memory or disk), found before any work started."""


def format_bytes(n: float) -> str:
    """``1.5 GB``-style text (powers of 1000); ``inf`` for sizes beyond any machine."""
    if not math.isfinite(n):
        return "an unbounded amount"
    for unit in ("B", "kB", "MB", "GB", "TB", "PB", "EB"):
        if abs(n) < 1000 or unit == "EB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000.0
    return f"{n:.3g} EB"  # pragma: no cover


def _read_int(path: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        text = Path(path).read_text().strip()
        if text and text != "max":
            return int(text.split()[0])
    return None


def _meminfo_available() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup memory limit (v2, else v1); None: no limit."""
    rel = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                rel = line[3:].strip().lstrip("/")
    for base in (Path("/sys/fs/cgroup") / rel, Path("/sys/fs/cgroup")):
        limit, used = _read_int(str(base / "memory.max")), _read_int(str(base / "memory.current"))
        if limit is not None and used is not None:
            return max(limit - used, 0)
    limit = _read_int("/sys/fs/cgroup/memory/memory.limit_in_bytes")
    used = _read_int("/sys/fs/cgroup/memory/memory.usage_in_bytes")
    if limit is not None and used is not None and limit < 1 << 60:
        return max(limit - used, 0)
    return None


def _rlimit_room() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    size = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                size = int(line.split()[1]) * 1024
    return max(soft - (size or 0), 0)


def available_memory(device: object = None) -> int:
    """Bytes of memory this process can still allocate (CPU, or the CUDA ``device``)."""
    if device is not None and getattr(device, "type", str(device).split(":")[0]) == "cuda":
        import torch

        with contextlib.suppress(Exception):
            return int(torch.cuda.mem_get_info(device)[0])
    rooms = [r for r in (_meminfo_available(), _cgroup_room(), _rlimit_room()) if r is not None]
    return min(rooms) if rooms else 1 << 62


def check_memory(need: float, what: str, device: object = None) -> None:
    """Refuse (``ResourceError``) when ``need`` bytes exceed the memory available."""
    have = available_memory(device)
    if not need <= have:
        where = "" if device is None or str(device) == "cpu" else f" on {device}"
        raise ResourceError(f"{what} would need at least {format_bytes(need)} of memory{where}; "
                            f"{format_bytes(have)} is available")


def check_disk(path: str | Path, need: float, what: str) -> None:
    """Refuse (``ResourceError``) when ``need`` bytes exceed the free space where ``path``
    goes."""
    from crbnet.special_outputs import check_creatable, stream_for

    try:
        if stream_for(path) is not None:   # built in a private temporary folder first
            import tempfile

            path = tempfile.gettempdir()
    except OSError:
        return   # refused as an output anyway, with its own line
    check_creatable(path)   # /proc reports 0 bytes free: say what is really wrong
    have = free_disk(path)
    if not need <= have and have < FULL_DISK_BYTES:
        # nothing fits, whatever the size: the environment refuses (exit code 1), as a write
        # on the full disk would
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    if not need <= have:
        raise ResourceError(f"{what} would need at least {format_bytes(need)} of disk space at "
                            f"{nearest_existing(path)}; {format_bytes(have)} is free")


def count(*factors: float) -> float:
    """The product of sizes as a float (no overflow, no huge integers)."""
    out = 1.0
    for f in factors:
        out *= float(f)
    return out


__all__ = ["ResourceError", "available_memory", "free_disk", "check_memory", "check_disk",
           "format_bytes", "nearest_existing", "count"]
