"""How quiet the machine was while a block was timed: cores used by this process and by everything else.

A speed ratio between our multi-threaded transform and umap-learn's single-threaded one is
only meaningful on a quiet machine: one busy process elsewhere takes a core from our two
threads (three runnable threads on two cores) while umap-learn's one thread still has a core
of its own, so the ratio falls by about a third with nothing changed in either code (measured
in ``benchmarks/RESULTS.md``, "Issue 15 (session 9)"). :func:`measure_cpu` records, for a
timed block, the wall time, this process's CPU time and (on Linux, from ``/proc/stat``) the
CPU time everyone else used and the time the hypervisor stole, so ``rescue bench`` can say
whether each figure was measured on a quiet machine.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["QUIET_SHARE", "CpuUsage", "measure_cpu", "proc_stat_seconds"]

#: A block counts as measured on a quiet machine while other processes and steal took less
#: than this share of the machine's cores.
QUIET_SHARE = 0.1

_PROC_STAT = Path("/proc/stat")


@dataclasses.dataclass
class CpuUsage:
    """Cores (CPU seconds per wall second) used while one block ran.

    ``other_cores`` and ``steal_cores`` are None where ``/proc/stat`` cannot be read (not Linux).
    """

    cores: int
    wall_s: float = 0.0
    own_cores: float = 0.0
    other_cores: float | None = None
    steal_cores: float | None = None

    @property
    def contention(self) -> float | None:
        """Share of the machine's cores taken by other processes and steal (None if unknown)."""
        if self.other_cores is None or self.steal_cores is None:
            return None
        return (self.other_cores + self.steal_cores) / max(self.cores, 1)

    @property
    def quiet(self) -> bool | None:
        """Whether :attr:`contention` stayed below :data:`QUIET_SHARE` (None if unknown)."""
        c = self.contention
        return None if c is None else c < QUIET_SHARE

    def as_dict(self) -> dict[str, Any]:
        """The JSON form: the fields plus ``contention`` and ``quiet``."""
        return {**dataclasses.asdict(self), "contention": self.contention, "quiet": self.quiet}


def proc_stat_seconds(text: str, ticks_per_s: float) -> tuple[float, float]:
    """(busy, steal) CPU seconds of all cores from the text of ``/proc/stat``.

    Busy is user + nice + system + irq + softirq of the aggregate ``cpu`` line (guest time is
    already inside user); idle and iowait are not busy; steal is the hypervisor's.
    """
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "cpu":
            v = [float(x) for x in parts[1:]] + [0.0] * 8
            busy = v[0] + v[1] + v[2] + v[5] + v[6]
            return busy / ticks_per_s, v[7] / ticks_per_s
    raise ValueError("no aggregate 'cpu' line in /proc/stat")


def _read_proc_stat() -> tuple[float, float] | None:
    """(busy, steal) seconds now, or None where ``/proc/stat`` is not readable."""
    try:
        return proc_stat_seconds(_PROC_STAT.read_text(), float(os.sysconf("SC_CLK_TCK")))
    except (OSError, ValueError):
        return None


@contextmanager
def measure_cpu() -> Iterator[CpuUsage]:
    """Measure the block inside ``with``; the yielded :class:`CpuUsage` is filled in on exit.

    ``own_cores`` is this process's CPU time (all threads) over the wall time;
    ``other_cores`` is the machine's busy CPU time less ours, over the wall time (clipped at 0:
    ``/proc/stat`` counts in ticks of 10 ms); ``steal_cores`` the same for steal.
    """
    usage = CpuUsage(cores=os.cpu_count() or 1)
    stat0, cpu0, t0 = _read_proc_stat(), time.process_time(), time.perf_counter()
    try:
        yield usage
    finally:
        wall = time.perf_counter() - t0
        own = time.process_time() - cpu0
        stat1 = _read_proc_stat()
        usage.wall_s = wall
        usage.own_cores = own / wall if wall > 0 else 0.0
        if stat0 is not None and stat1 is not None and wall > 0:
            usage.other_cores = max(0.0, (stat1[0] - stat0[0]) - own) / wall
            usage.steal_cores = max(0.0, stat1[1] - stat0[1]) / wall
