"""Peak memory of a stretch of work in a benchmark's child process, shared by the memory
benchmarks (``bench/materialize_memory.py``, ``bench/build_memory.py``).

Linux keeps ``ru_maxrss`` across fork and exec: a child starts at its parent's peak, so a
parent that read a big file first hides the child's own peak. Instead the peak RSS (``VmHWM``)
is reset to the current RSS (``/proc/self/clear_refs``) where the measure starts.
"""

from __future__ import annotations

from pathlib import Path

# TESSERA_BUILD_ROWS above any view's rows here: the build in one part, as before ranges
ONE_PART = "1000000000000"


def _status_mb(field: str) -> float:
    """A field of /proc/self/status (VmRSS, VmHWM: the peak RSS), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # kB
    raise KeyError(field)


def start() -> float:
    """Reset the peak RSS to the current RSS; the current RSS (MiB), the measure's base."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def peak_mb() -> float:
    """The peak RSS (MiB) since :func:`start`."""
    return _status_mb("VmHWM")
