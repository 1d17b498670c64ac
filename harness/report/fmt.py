"""Number formatting and escaping shared by the HTML, Markdown and CSV outputs.

Every string a report prints may come from a plan, a model file or the environment, so each
output format has one escaping function here and the writers never build text without it.
"""

from __future__ import annotations

import html
import math
import re

# Characters Markdown (GitHub flavour) would interpret inside a table cell: emphasis, code,
# links (`[`; parentheses only matter after `]`), strike-through, and `|`, which would end the
# cell. `<`, `>` and `&` become entities because GitHub renders inline HTML.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def ms(value: float | None) -> str:
    """A latency in milliseconds with three significant figures (2.34, 23.4, 234)."""
    if value is None or not math.isfinite(value):
        return "–"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def num(value: float | None, digits: int = 1) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:,.{digits}f}"


def rate(value: float | None, digits: int = 1) -> str:
    """A rate (images per second): `digits` decimals from 1 up, and two significant figures
    below 1, so a slow CPU cell at 0.2 images/s never reads as 0."""
    if value is None or not math.isfinite(value):
        return "–"
    if value == 0 or abs(value) >= 1:
        return f"{value:,.{digits}f}"
    return f"{value:.2g}"


def sig(value: float | None, digits: int = 3) -> str:
    """A figure to `digits` significant figures, without exponent below a million (0.0412,
    41.2, 4,120): energies and powers, whose sizes span decades."""
    if value is None or not math.isfinite(value):
        return "–"
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(digits - 1 - magnitude, 0)
    return f"{value:,.{decimals}f}"


def mb(value: float | None, digits: int = 1) -> str:
    """Bytes as MB (10^6 bytes, as the plan's budgets count them)."""
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value / 1e6:,.{digits}f}"


def points(value: float | None, digits: int = 1) -> str:
    """A pycocotools figure (0..1; None or -1 when it has no data) as COCO points (0..100)."""
    if value is None or not math.isfinite(value) or value < 0:
        return "–"
    return f"{value * 100:,.{digits}f}"


def signed(value: float | None, digits: int = 1, unit: str = "") -> str:
    """A change with its sign always shown (+0.3, −1.2); a real minus sign for readability."""
    if value is None or not math.isfinite(value):
        return "–"
    text = f"{abs(value):.{digits}f}{unit}"
    if round(value, digits) == 0:
        return f"±{text}"
    return ("+" if value > 0 else "−") + text


def pct(value: float | None, digits: int = 1) -> str:
    return signed(value, digits, "%")


def share(value: float | None, digits: int = 0) -> str:
    """A fraction 0..1 as a plain percentage (no sign): 0.25 -> 25%."""
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value * 100:.{digits}f}%"


def speedup(value: float | None) -> str:
    """A ratio of medians, as 2.00× (two decimals: the medians' own CIs are about 1-2%)."""
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.2f}×"


def md(text: object) -> str:
    """Escape text for a GitHub Markdown table cell: no cell breaks, no HTML, no formatting."""
    s = " ".join(str(text).split())  # newlines would end the table row
    s = html.escape(s, quote=False)
    return _MD_SPECIAL.sub(r"\\\1", s)


def csv_text(text: object) -> str:
    """A text field safe to open in a spreadsheet: a leading = + - @ would start a formula
    (CSV injection), so such values get a leading apostrophe, as OWASP recommends."""
    s = str(text)
    return "'" + s if s[:1] in ("=", "+", "-", "@", "\t", "\r") else s


def short_hash(value: str | None, n: int = 12) -> str:
    if not value:
        return "–"
    return value.split(":", 1)[-1][:n]
