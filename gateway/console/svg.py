"""Charts drawn into the page as inline SVG (no image round trip, no script): a histogram of waits with its target
lines, and horizontal bars of counts. Each chart has a title and a description for screen readers, and the page
shows the same figures in a table beside it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

from markupsafe import Markup

__all__ = ["wait_histogram", "count_bars"]

_W, _H, _PAD = 640, 240, 40
_BAR = "#005eb8"  # NHS blue
_LINE = ("#d5281b", "#330072")  # NHS red, NHS purple: the target line, the outer line


def wait_histogram(chart_id: str, title: str, days: Sequence[int], lines: Mapping[str, int], bin_days: int = 7) -> Markup:
    """How many wait how long, in bins of `bin_days`, with a vertical line at each of `lines` (label -> days)."""
    top_day = max([*days, *lines.values(), bin_days])
    bins = [0] * (top_day // bin_days + 1)
    for day in days:
        bins[day // bin_days] += 1
    peak = max([*bins, 1])
    plot_w, plot_h = _W - 2 * _PAD, _H - 2 * _PAD
    width = plot_w / len(bins)
    parts = [_open(chart_id, title, f"{len(days)} waiting; " + "; ".join(f"{k}: {v} days" for k, v in lines.items()))]
    parts.append(f'<line x1="{_PAD}" y1="{_H - _PAD}" x2="{_W - _PAD}" y2="{_H - _PAD}" stroke="#4c6272"/>')
    for index, count in enumerate(bins):
        height = plot_h * count / peak
        x = _PAD + index * width
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{_H - _PAD - height:.1f}" width="{max(width - 2, 1):.1f}" height="{height:.1f}" fill="{_BAR}">'
            f"<title>{index * bin_days}-{(index + 1) * bin_days - 1} days: {count}</title></rect>"
        )
    for (label, day), colour in zip(lines.items(), _LINE * 4, strict=False):
        x = _PAD + plot_w * day / (len(bins) * bin_days)
        parts.append(
            f'<line x1="{x:.1f}" y1="{_PAD - 10}" x2="{x:.1f}" y2="{_H - _PAD}" stroke="{colour}" stroke-width="2" stroke-dasharray="6 3"/>'
        )
        parts.append(f'<text x="{x + 4:.1f}" y="{_PAD - 14}" fill="{colour}" font-size="13">{escape(label)} ({day} d)</text>')
    parts.append(f'<text x="{_PAD}" y="{_H - 10}" font-size="13" fill="#212b32">0 days</text>')
    parts.append(f'<text x="{_W - _PAD}" y="{_H - 10}" font-size="13" fill="#212b32" text-anchor="end">{len(bins) * bin_days} days</text>')
    parts.append(f'<text x="{_PAD - 6}" y="{_PAD + 4}" font-size="13" fill="#212b32" text-anchor="end">{peak}</text>')
    return Markup("".join(parts) + "</svg>")


def count_bars(chart_id: str, title: str, counts: Mapping[str, int]) -> Markup:
    """One horizontal bar per label, its count at its end."""
    rows = list(counts.items()) or [("(none)", 0)]
    row_h, label_w = 26, 220
    height = row_h * len(rows) + 20
    peak = max([n for _, n in rows] + [1])
    parts = [_open(chart_id, title, "; ".join(f"{k}: {v}" for k, v in rows), height)]
    for index, (label, count) in enumerate(rows):
        y = 10 + index * row_h
        length = (_W - label_w - 60) * count / peak
        parts.append(f'<text x="{label_w - 8}" y="{y + 17}" font-size="13" fill="#212b32" text-anchor="end">{escape(label[:32])}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{length:.1f}" height="{row_h - 8}" fill="{_BAR}"/>')
        parts.append(f'<text x="{label_w + length + 6:.1f}" y="{y + 17}" font-size="13" fill="#212b32">{count}</text>')
    return Markup("".join(parts) + "</svg>")


def _open(chart_id: str, title: str, description: str, height: int = _H) -> str:
    return (
        f'<svg class="console-chart" viewBox="0 0 {_W} {height}" role="img" aria-labelledby="{chart_id}-t {chart_id}-d" '
        f'xmlns="http://www.w3.org/2000/svg"><title id="{chart_id}-t">{escape(title)}</title>'
        f'<desc id="{chart_id}-d">{escape(description)}</desc>'
    )
