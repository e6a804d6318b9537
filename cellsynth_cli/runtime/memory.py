"""How much memory this machine has free, and byte counts written for people."""

from __future__ import annotations

import os

MEMINFO = "/proc/meminfo"


def available_bytes() -> int | None:
    """Memory that new allocations can get without swapping (Linux MemAvailable: free memory
    plus reclaimable caches); free pages where there is no /proc; None when unknown."""
    try:
        with open(MEMINFO) as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the value is in kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def format_bytes(count: float) -> str:
    """1536 -> '1.5 KiB', 6.8e11 -> '633 GiB'."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    value = float(count)
    unit = units[0]
    for unit in units:
        if value < 1024 or unit == units[-1]:
            break
        value /= 1024
    return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
