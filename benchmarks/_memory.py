"""Peak memory of the running process, for the benchmarks (standard library only, so a child
that measures a fold does not pay for importing torch)."""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_mib() -> float:
    """Peak resident memory of this process's own address space.

    Not getrusage's ru_maxrss: Linux carries it across fork+exec, so a child started by a
    large parent reports the parent's size at the fork. VmHWM belongs to the exec'd image.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: best effort
