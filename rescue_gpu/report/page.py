"""The HTML page toolkit of the reports: one self-contained file (inline CSS, PNGs as base64 data URIs).

Public pieces each assay's report builds its sections from: :func:`write_page` (title +
``(heading, html)`` sections), :func:`kv` and :func:`table` (HTML tables), :func:`fig_uri`
and :func:`png_data_uri` (images), :func:`pyplot` (matplotlib on Agg). Nothing is fetched
from the network when a page is opened.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["write_page", "kv", "table", "fmt", "fig_uri", "png_data_uri", "pyplot"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .5em;text-align:left}
th{background:#f4f4f4}.pos{color:#b00020;font-weight:600}.neg{color:#1b5e20}.failed{color:#999}
.gallery{display:flex;flex-wrap:wrap;gap:10px}.gallery figure{margin:0;width:150px;font-size:.75em;text-align:center}
.gallery img{width:150px;height:150px;image-rendering:pixelated;border:1px solid #ccc}
.kv td:first-child{font-weight:600;white-space:nowrap}code{font-size:.85em;word-break:break-all}
"""



def pyplot() -> Any:
    """matplotlib's pyplot on the non-interactive Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def png_data_uri(data: bytes) -> str:
    """A ``data:image/png;base64,...`` URI of PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def fig_uri(fig: Any) -> str:
    """A matplotlib figure as a PNG data URI (the figure is closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    pyplot().close(fig)
    return png_data_uri(buf.getvalue())


def table(df: pd.DataFrame, *, max_rows: int = 5000) -> str:
    """An HTML table of ``df`` (first ``max_rows`` rows); rows are classed by ``status`` and ``call``."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    for _, row in df.head(max_rows).iterrows():
        cls = "failed" if row.get("status") == "failed" else {"positive": "pos", "negative": "neg"}.get(row.get("call"), "")
        cells = "".join(f"<td>{html.escape(fmt(v))}</td>" for v in row.to_numpy())
        body.append(f'<tr class="{cls}">{cells}</tr>')
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def fmt(v: Any) -> str:
    """One table cell: empty for missing values, 4 significant digits for floats."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def kv(items: Mapping[str, Any]) -> str:
    """A two-column key/value table; non-string values as indented JSON."""
    rows = []
    for k, v in items.items():
        text = v if isinstance(v, str) else json.dumps(v, indent=1, sort_keys=True, default=str)
        rows.append(f"<tr><td>{html.escape(str(k))}</td><td><code>{html.escape(text)}</code></td></tr>")
    return f'<table class="kv">{"".join(rows)}</table>'


def write_page(path: str | Path, title: str, sections: list[tuple[str, str]]) -> Path:
    """Write one self-contained HTML page: the title, when it was written, then ``(heading, html)`` sections."""
    when = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1><p>Written {when}.</p>"]
    parts += [f"<h2>{html.escape(heading)}</h2>{body}" for heading, body in sections]
    parts.append("</body></html>")
    out = Path(path)
    out.write_text("\n".join(parts), encoding="utf-8")
    return out


