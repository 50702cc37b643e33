"""Tabular outputs shared by the assays: ``scores.csv`` and ``scores.parquet``, written atomically.

Files are written to a temporary name beside the final one and renamed when complete, so a
crash or a full disk never leaves half a table; :func:`join_warnings` makes one cell of a
``warnings`` column.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import writing

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["replacing", "write_table", "join_warnings"]


def join_warnings(warnings: Sequence[str] | None) -> str:
    """One cell of the ``warnings`` column: the warnings joined by ``"; "`` ("" when none; ``;`` inside one becomes ``,``)."""
    return "; ".join(str(w).replace(";", ",") for w in (warnings or ()))


@contextmanager
def replacing(final: Path, tmp_name: str | None = None) -> Iterator[Path]:
    """A temporary path beside ``final`` (``.<name>.tmp``), renamed to ``final`` when the block succeeds.

    On failure the temporary file is removed (a full disk gets its space back) and
    ``final`` is left as it was.

    Raises
    ------
    OutputError
        The file system is read-only or full (or similar); the message names ``final``.
    """
    tmp = final.with_name(tmp_name or f".{final.name}.tmp")
    try:
        with writing(final):
            yield tmp
            os.replace(tmp, final)
    finally:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)


def write_table(df: pd.DataFrame, run_dir: Path) -> dict[str, Path]:
    """Write ``scores.csv`` and ``scores.parquet`` (via temporary files, renamed once both are written)."""
    with writing(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
    csv, parquet = run_dir / "scores.csv", run_dir / "scores.parquet"
    with replacing(csv) as csv_tmp:  # nested, so that a failure names the file being written
        df.to_csv(csv_tmp, index=False, float_format="%.6g")
        with replacing(parquet) as pq_tmp:
            df.to_parquet(pq_tmp, index=False)
    return {"csv": csv, "parquet": parquet}
