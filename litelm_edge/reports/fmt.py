"""How the reports write a number: one place, so bench.md, the HTML pages, JUnit and the gates agree."""
from __future__ import annotations

NA = "n/a"  # a figure not obtained (never written as 0 or "None")


def num(v: object, nd: int = 2) -> str:
    """A figure for a table: nd decimals with thousands separators; nd significant digits below 0.01."""
    if v is None:
        return NA
    if isinstance(v, float):
        return f"{v:.{nd}g}" if abs(v) < 1e-2 and v else f"{v:,.{nd}f}"
    return str(v)


def sig(v: object, digits: int = 6) -> str:
    """A figure in a sentence or a machine-read message: `digits` significant digits."""
    if v is None:
        return NA
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)
