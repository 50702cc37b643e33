"""Strict parsing of the numbers written in FCS keyword values.

Python's :func:`int` and :func:`float` accept far more than an FCS file may hold: any
Unicode decimal digit (``int("٣") == 3``), underscores (``int("1_000")``), ``"nan"`` and
``"inf"``; and :meth:`str.isdigit` is true for characters that :func:`int` refuses
(``"³"``). A keyword value is a number here only when it is plain ASCII: optional sign,
the digits ``0-9``, an optional decimal point and exponent, surrounded by optional
white space. Everything else is refused with an :class:`~rescue_gpu.errors.FcsFormatError`
that names the keyword and the file, or (for the lenient ``*_or_none`` forms, used where a
bad value only loses an optional detail) reported as None.
"""

from __future__ import annotations

import math
import os
import re

from ..errors import FcsFormatError

__all__ = ["ascii_int", "ascii_float", "ascii_int_or_none", "ascii_float_or_none", "MAX_DIGITS"]

MAX_DIGITS = 40  # significant digits of an integer; no FCS quantity needs more (2**64 has 20)
_INT = re.compile(r"[+-]?[0-9]+", re.ASCII)
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
_WHITE = " \t\r\n\x00"

PathLike = str | os.PathLike[str] | None


def _show(text: str) -> str:
    """A value for an error message: repr, cut to 40 characters."""
    return repr(text if len(text) <= 40 else text[:37] + "...")


def ascii_int_or_none(text: str) -> int | None:
    """The integer ``text`` spells in ASCII, or None.

    Parameters
    ----------
    text
        A keyword value. Integral decimal forms (``"1000.0"``, ``"1E3"``) count as
        integers, as some writers use them for counts and offsets.

    Returns
    -------
    int or None
        None when ``text`` is empty, not plain ASCII digits, not integral, or longer than
        :data:`MAX_DIGITS` significant digits.
    """
    s = text.strip(_WHITE)
    if _INT.fullmatch(s):
        digits = s.lstrip("+-").lstrip("0")
        return int(s) if len(digits) <= MAX_DIGITS else None
    value = ascii_float_or_none(s)
    if value is None or not value.is_integer() or abs(value) >= 10.0**MAX_DIGITS:
        return None
    return int(value)


def ascii_float_or_none(text: str) -> float | None:
    """The finite float ``text`` spells in ASCII, or None.

    Parameters
    ----------
    text
        A keyword value.

    Returns
    -------
    float or None
        None when ``text`` is empty, not a plain ASCII decimal number (``nan``, ``inf``,
        Unicode digits and underscores are not), or overflows to infinity.
    """
    s = text.strip(_WHITE)
    if len(s) > 400 or not _FLOAT.fullmatch(s):
        return None
    value = float(s)
    return value if math.isfinite(value) else None


def ascii_int(text: str | None, key: str, path: PathLike, *, default: int | None = None) -> int:
    """Keyword ``key``'s value as an integer, or an error that names it.

    Parameters
    ----------
    text
        The value (None or blank when the keyword is absent).
    key
        The keyword, for the message.
    path
        The file, for the message.
    default
        Returned when the value is absent or blank; without it, absence is an error.

    Returns
    -------
    int

    Raises
    ------
    FcsFormatError
        When the keyword is required and absent, or its value is not a plain ASCII integer.
    """
    if text is None or not text.strip(_WHITE):
        if default is None:
            raise FcsFormatError(path, f"required keyword {key} is missing")
        return default
    value = ascii_int_or_none(text)
    if value is None:
        kind = "an integer" if ascii_float_or_none(text) is not None else "a number"
        raise FcsFormatError(path, f"keyword {key} is not {kind}: {_show(text)} "
                                   f"(plain ASCII digits expected); the file is damaged or was written wrongly")
    return value


def ascii_float(text: str, key: str, path: PathLike) -> float:
    """Keyword ``key``'s value (or one item of it) as a finite float, or an error that names it.

    Parameters
    ----------
    text
        The value or item.
    key
        The keyword, for the message.
    path
        The file, for the message.

    Returns
    -------
    float

    Raises
    ------
    FcsFormatError
        When ``text`` is not a finite, plain ASCII decimal number.
    """
    value = ascii_float_or_none(text)
    if value is None:
        raise FcsFormatError(path, f"keyword {key} holds {_show(text)}, which is not a finite number "
                                   f"in plain ASCII; the file is damaged or was written wrongly")
    return value
