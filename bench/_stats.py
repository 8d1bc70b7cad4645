"""The numbers every benchmark prints: a percentile and milliseconds, one way each."""

from __future__ import annotations


def pct(values: list[float], p: float) -> float:
    """The `p`th percentile of `values`: the nearest sample, no interpolation."""
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"
