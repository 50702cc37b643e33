"""Panel matching: find each panel marker among a file's parameters, forgivingly.

A label (``$PnS`` or ``$PnN``) is split into tokens at spaces, dashes, underscores,
dots, slashes and brackets, after case folding. A marker name matches a label

1. *exactly* when the tokens joined together are equal (``"HLA-DR"`` = ``"hla dr"``),
2. *as a prefix* when the label's first tokens join to the name (``"CD34 PerCP-Cy5.5"``,
   ``"CD34-PC5.5"``, ``"CD34 PE-Cy7-A"``, ``"HLA-DR V500"``),
3. *as a token run* anywhere in the label (``"PE-Cy7 CD34"``).

Tokens are compared whole, so ``CD3`` never matches ``CD34`` or ``CD33``. Each marker
is tried with its aliases, against ``$PnS`` first and ``$PnN`` only when no ``$PnS``
matches. Among the candidates the best level wins; two parameters at the best level
is ambiguous, an error listing them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..config import PanelSpec
from ..errors import PanelError

__all__ = ["match_panel", "match_channels", "default_channels", "marker_tokens", "is_scatter", "describe_parameters"]

_SPLIT = re.compile(r"[\s\-_./\\:;,#()\[\]]+")
_EXCLUDED = re.compile(r"^(time\w*|event|events|eventcount|eventnumber|eventnum|eventno|eventid)$")
_SCATTER = re.compile(r"^(fsc|ssc|fs|ss)([^a-z]|$|log|lin|area|height|width|[ahw]$)")


def marker_tokens(label: str) -> tuple[str, ...]:
    """Case-folded tokens of a label: ``"CD34 PerCP-Cy5.5"`` -> ``("cd34", "percp", "cy5", "5")``."""
    return tuple(t for t in _SPLIT.split(label.casefold()) if t)


def _level(name: tuple[str, ...], label: tuple[str, ...]) -> int | None:
    """Match level of marker tokens ``name`` in ``label``: 0 exact, 1 prefix, 2 run; None."""
    joined = "".join(name)
    if not joined or not label:
        return None
    if "".join(label) == joined:
        return 0
    for start in range(len(label)):
        acc = ""
        for tok in label[start:]:
            acc += tok
            if acc == joined:
                return 1 if start == 0 else 2
            if not joined.startswith(acc):
                break
    return None


def describe_parameters(channels: Sequence[str], markers: Sequence[str]) -> str:
    """``"1 FSC-A, 2 SSC-A, 3 FITC-A (CD45), ..."``: what a file has, for error messages."""
    parts = []
    for i, (ch, mk) in enumerate(zip(channels, markers), start=1):
        mk = (mk or "").strip()
        parts.append(f"{i} {ch}" + (f" ({mk})" if mk and mk != ch else ""))
    return ", ".join(parts)


def _candidates(names: list[tuple[str, ...]], labels: Sequence[str]) -> tuple[int | None, list[int]]:
    """Best level and the parameters that reach it, over a marker's names."""
    best: int | None = None
    found: list[int] = []
    for i, label in enumerate(labels):
        toks = marker_tokens(label or "")
        levels = [lv for lv in (_level(n, toks) for n in names) if lv is not None]
        if not levels:
            continue
        lv = min(levels)
        if best is None or lv < best:
            best, found = lv, [i]
        elif lv == best:
            found.append(i)
    return best, found


def _names(marker: str, panel: PanelSpec) -> list[tuple[str, ...]]:
    aliases = panel.aliases.get(marker, ())
    return [marker_tokens(n) for n in (marker, *aliases) if marker_tokens(n)]


def _match_one(marker: str, channels: Sequence[str], markers: Sequence[str], panel: PanelSpec) -> int:
    names = _names(marker, panel)
    what = describe_parameters(channels, markers)
    for source, labels in (("$PnS", markers), ("$PnN", channels)):
        _, found = _candidates(names, labels)
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            which = ", ".join(f"{i + 1} {channels[i]} ({markers[i]})" for i in found)
            raise PanelError(
                f"panel marker {marker!r} is ambiguous: it matches {source} of {len(found)} parameters "
                f"equally well ({which}); rename the marker or add an exact alias. The file has: {what}"
            )
    tried = ", ".join(repr(n) for n in (marker, *panel.aliases.get(marker, ())))
    raise PanelError(
        f"panel marker {marker!r} not found (tried {tried} against $PnS and $PnN); "
        f"add an alias under [panel.aliases] if the file names it differently. The file has: {what}"
    )


def match_panel(channels: Sequence[str], markers: Sequence[str], panel: PanelSpec) -> list[int]:
    """Column index of every panel marker, in panel order.

    Parameters
    ----------
    channels
        ``$PnN`` of every parameter.
    markers
        ``$PnS`` of every parameter (``""`` where absent).
    panel
        The markers and their aliases. Empty ``panel.markers`` means every parameter
        except time and event counters (see :func:`default_channels`).

    Returns
    -------
    list of int
        One index per marker.

    Raises
    ------
    PanelError
        A marker is missing or ambiguous, or two markers land on one parameter; the
        message lists the file's channels with their markers.
    """
    labels = [(m or "").strip() for m in markers]
    if not panel.markers:
        return default_channels(channels)
    idx = [_match_one(m, channels, labels, panel) for m in panel.markers]
    seen: dict[int, str] = {}
    for marker, i in zip(panel.markers, idx):
        if i in seen:
            raise PanelError(
                f"panel markers {seen[i]!r} and {marker!r} both match parameter {i + 1} {channels[i]} "
                f"({labels[i]}); the file has: {describe_parameters(channels, labels)}"
            )
        seen[i] = marker
    return idx


def match_channels(channels: Sequence[str], names: Sequence[str], *, what: str = "scatter") -> list[int]:
    """Column index of each of ``names`` among ``channels`` ($PnN), ignoring case and separators.

    Raises
    ------
    PanelError
        A name is missing or matches more than one channel; the message lists the channels.
    """
    keys = ["".join(marker_tokens(c)) for c in channels]
    out = []
    for name in names:
        hits = [i for i, k in enumerate(keys) if k == "".join(marker_tokens(name))]
        exact = [i for i in hits if channels[i] == name]
        if len(hits) == 1 or len(exact) == 1:
            out.append(exact[0] if exact else hits[0])
            continue
        problem = "not found" if not hits else "ambiguous"
        raise PanelError(f"{what} channel {name!r} {problem} among the file's channels: {', '.join(channels)}")
    return out


def is_scatter(channel: str) -> bool:
    """Whether a ``$PnN`` names a scatter parameter (``FSC-A``, ``SSC-H``, ``FS Log``, ...)."""
    return bool(_SCATTER.match(channel.strip().casefold()))


def default_channels(channels: Sequence[str]) -> list[int]:
    """Every parameter except time and event counters (``Time``, ``TIME2``, ``Event #``, ...)."""
    return [i for i, c in enumerate(channels) if not _EXCLUDED.match("".join(marker_tokens(c)))]
