"""Progress counters of a run: samples done and failed, units processed and their rate."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .assay import SampleResult

__all__ = ["Progress"]


@dataclass
class Progress:
    """Counts results as the client writes them and reports ``on_progress(i, n, failed=..., <unit>_per_s=...)``.

    Attributes
    ----------
    total
        Samples to process.
    on_progress
        Called after every sample (None: silent).
    unit
        What a record's ``n_<unit>`` field counts (``"events"``, ``"cells"``).
    done, failed, events
        Samples written, of which failed; units (``n_<unit>``) they held.
    elapsed
        Seconds of the processing phase (set by :meth:`stop`).
    """

    total: int
    on_progress: Callable[..., None] | None = None
    unit: str = "events"
    started: float = field(default_factory=time.perf_counter)
    done: int = 0
    failed: int = 0
    events: int = 0
    elapsed: float = 0.0

    def add(self, res: SampleResult) -> None:
        """Count one written result and report."""
        self.done += 1
        self.failed += int(res.failed)
        self.events += int(res.record.get(f"n_{self.unit}") or 0)
        if self.on_progress is not None:
            rate = self.events / max(time.perf_counter() - self.started, 1e-9)
            self.on_progress(self.done - 1, self.total, failed=self.failed, **{f"{self.unit}_per_s": f"{rate:,.0f}"})

    def restart(self) -> None:
        """Start the clock of the processing phase now."""
        self.started = time.perf_counter()

    def stop(self) -> Progress:
        """End the processing phase: :attr:`elapsed` holds its seconds; returns ``self``."""
        self.elapsed = time.perf_counter() - self.started
        return self
