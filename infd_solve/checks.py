"""Argument checks shared by every public entry point: one place that says what a valid number is.

Each check returns the value as a plain Python type or raises ``ValueError`` whose message starts with the
argument's name (layouts use that name to point at the offending field). numpy scalars are accepted wherever
a Python number is; booleans, strings, NaN and infinities are not numbers here.
"""

from __future__ import annotations

import difflib
import math
import numbers


def _plain(value):
    """numpy / torch scalars -> Python int or float; anything else unchanged."""
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        item = getattr(value, "item", None)
        if callable(item) and getattr(value, "ndim", None) == 0 and getattr(value, "dtype", None) is not None \
                and str(value.dtype) != "bool":
            return item()
        return value
    return value


def number(value, name: str, low: float | None = 0.0, high: float | None = None, strict: bool = False) -> float:
    """A finite real number in ``[low, high]`` (``(low, high]`` when ``strict``)."""
    value = _plain(value)
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        try:
            ok = math.isfinite(value)
        except OverflowError:  # an int too large for a float
            ok = False
    if ok and low is not None:
        ok = value > low if strict else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bounds = []
        if low is not None:
            bounds.append(f"> {low:g}" if strict else f">= {low:g}")
        if high is not None:
            bounds.append(f"<= {high:g}")
        raise ValueError(f"{name} must be a finite number{' ' + ' and '.join(bounds) if bounds else ''}, "
                         f"got {shown(value)}")
    return float(value)


def integer(value, name: str, low: int | None = 0, high: int | None = None) -> int:
    """An integer in ``[low, high]`` (a float with an integer value is not an integer here)."""
    value = _plain(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
            or (low is not None and value < low) or (high is not None and value > high):
        bounds = " ".join(b for b in (f">= {low}" if low is not None else "", f"<= {high}" if high is not None
                                      else "") if b)
        raise ValueError(f"{name} must be an integer{' ' + bounds if bounds else ''}, got {shown(value)}")
    return int(value)


def boolean(value, name: str) -> bool:
    value = _plain(value)
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {shown(value)}")
    return value


def choice(value, name: str, options) -> str:
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}, got {shown(value)}")
    return value


def shown(value, limit: int = 80) -> str:
    """``repr`` of a value for an error message, shortened: a 400-digit number or a huge list must not flood
    a one-line error."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # e.g. ints past Python's digit limit
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 5] + " ...)"


def unknown_field(key, allowed) -> ValueError:
    """The error for a field that is not one of ``allowed``, with the closest allowed name."""
    names = [str(a) for a in allowed]
    key_text = str(key)
    close = [a for a in names if len(key_text) >= 3 and (key_text in a or a in key_text)][:1] or \
        difflib.get_close_matches(key_text, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"unknown field {shown(key, 200)}{hint}; allowed: {', '.join(sorted(allowed))}")
