"""Shared pieces of the command line: consoles, exit codes, a progress bar."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console

__all__ = ["EXIT_OK", "EXIT_UNEXPECTED", "EXIT_USAGE", "EXIT_SAMPLES_FAILED", "console", "err_console", "progress",
           "RunProgress", "print_run"]

EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE, EXIT_SAMPLES_FAILED = 0, 1, 2, 3


class _Console(Console):
    """A rich ``Console`` that never hard-wraps printed text when its file is not a terminal.

    Piped, redirected or captured (logs, scripts, tests), a message stays one line however
    long its paths are; tables are still laid out to the console's width. On a terminal,
    rich wraps as usual. Decided at each print, as the file (``sys.stderr``) may change.
    """

    @property  # type: ignore[override]
    def soft_wrap(self) -> bool:
        """Soft wrap (no inserted line breaks): as set, and always when not writing to a terminal."""
        return self._soft_wrap_set or not self.is_terminal

    @soft_wrap.setter
    def soft_wrap(self, value: bool) -> None:
        self._soft_wrap_set = bool(value)


console = _Console()
if not console.is_terminal:  # piped or captured: do not squeeze tables into 80 columns
    console = _Console(width=140)
err_console = _Console(stderr=True)


class progress:
    """A rich progress bar (on stderr) as a context manager yielding ``advance(i, n, **fields)``.

    ``advance`` marks item ``i`` of ``n`` done; extra keyword fields (e.g. ``failed=2``,
    ``rate="1.2 M ev/s"``) are shown after the bar.
    """

    def __init__(self, what: str, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                             TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=err_console,
                             transient=True)
        self._task = self._bar.add_task(what, total=total, info="")
        self._shown = False

    def __enter__(self) -> Callable[..., None]:
        self._shown = err_console.is_terminal  # piped or captured: no bar (rich would leave an empty line in logs)
        if self._shown:
            self._bar.start()
        return self.advance

    def advance(self, i: int, n: int, **fields: Any) -> None:
        """Mark item ``i`` (0-based) of ``n`` done and show ``fields``."""
        info = "  ".join(f"{k}={v}" for k, v in fields.items())
        self._bar.update(self._task, completed=i + 1, total=n, info=info)

    def __exit__(self, *exc: object) -> None:
        if self._shown:
            self._bar.stop()


class RunProgress:
    """Callbacks of a scoring run: print the cluster and sample counts at start, then a progress bar.

    Use as a context manager; pass :meth:`on_start` and :meth:`on_progress` to the runner.
    """

    def __init__(self, what: str = "scoring") -> None:
        self.what, self._bar = what, None

    def on_start(self, cluster: str, n_todo: int, n_skipped: int) -> None:
        """Say where the run goes and how much there is to do; open the bar."""
        console.print(f"cluster: {cluster}", markup=False, highlight=False)
        console.print(f"samples: {n_todo} to score, {n_skipped} already done (skipped)")
        if n_todo:
            self._bar = progress(self.what, n_todo)
            self._bar.__enter__()

    def on_progress(self, i: int, n: int, **fields: Any) -> None:
        """Advance the bar (see :meth:`progress.advance`)."""
        if self._bar is not None:
            self._bar.advance(i, n, **fields)

    def __enter__(self) -> RunProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)


def print_run(summary: Any, rate: str, table: Any) -> None:
    """Print a scoring run's counts and ``rate``, where its outputs are, and each failed sample's error.

    ``table`` is the run's score table (a DataFrame with ``sample_id``, ``status``, ``error``).
    """
    console.print(f"scored {summary.n_scored}/{summary.n_samples} samples ({summary.n_failed} failed, "
                  f"{summary.n_skipped} skipped as already done) in {summary.seconds:.1f} s: {rate}")
    for kind, path in summary.outputs.items():
        console.print(f"{kind}: {path}", markup=False, highlight=False)
    for _, row in table[table["status"] != "scored"].iterrows():
        err_console.print(f"failed: {row['sample_id']}: {row['error']}", markup=False, highlight=False, soft_wrap=True)
