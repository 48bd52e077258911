"""Charts drawn on the server as inline SVG (no script, no library), and the numbers they print.

    columns({"succeeded": [3, 5], "failed": [0, 1]}, ["09:14", "09:15"],
            label="Runs started per minute")

Each series is a status, coloured by the class `series-<status>` (charts.css maps them to
the console's status colours). A chart is an image with a text summary for screen
readers; each bar or point also carries a <title> (its tooltip). Pure: values in, markup out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import timedelta

from markupsafe import Markup, escape

from saga.timeline import duration

__all__ = ["columns", "lines", "meter", "seconds", "percent", "nice_ceiling"]

WIDTH, HEIGHT = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 10, 24  # room for the axes' labels
LABEL_EVERY = 10  # an x label every this many columns


def columns(series: Mapping[str, Sequence[int]], labels: Sequence[str], *, label: str,
            order: Sequence[str] = ()) -> Markup:
    """Stacked columns, one per label; each column stacks the series in `order`."""
    names = _ordered(series, order)
    count = len(labels)
    totals = [sum(series[n][i] for n in names) for i in range(count)]
    top = nice_ceiling(max(totals, default=0))
    step = _plot_width() / max(count, 1)
    parts = []
    for i in range(count):
        base = 0
        for name in names:
            value = series[name][i]
            if not value:
                continue
            y0, y1 = _y(base, top), _y(base + value, top)
            parts.append(
                f'<rect class="series-{escape(name)}" x="{LEFT + i * step + step * 0.1:.1f}" '
                f'y="{y1:.1f}" width="{step * 0.8:.1f}" height="{y0 - y1:.1f}">'
                f"<title>{escape(labels[i])} {escape(name)}: {value}</title></rect>")
            base += value
    return _figure(label, _summary(label, series, names), top, labels, step, "".join(parts),
                   names)


def lines(series: Mapping[str, Sequence[int]], labels: Sequence[str], *, label: str,
          order: Sequence[str] = ()) -> Markup:
    """One line per series over the labels, each point with its value as a tooltip."""
    names = _ordered(series, order)
    count = len(labels)
    top = nice_ceiling(max((v for n in names for v in series[n]), default=0))
    step = _plot_width() / max(count, 1)
    parts = []
    for name in names:
        points = [(LEFT + (i + 0.5) * step, _y(series[name][i], top)) for i in range(count)]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        parts.append(f'<polyline class="series-{escape(name)}" points="{path}"/>')
        parts.extend(
            f'<circle class="series-{escape(name)}" cx="{x:.1f}" cy="{y:.1f}" r="2.5">'
            f"<title>{escape(labels[i])} {escape(name)}: {series[name][i]}</title></circle>"
            for i, (x, y) in enumerate(points) if series[name][i])
    return _figure(label, _summary(label, series, names), top, labels, step, "".join(parts),
                   names, kind="lines")


def meter(value: float, top: float, label: str, kind: str = "") -> Markup:
    """A small bar for a table cell: `value` as a share of `top` (the column's largest);
    `kind` "failing" draws it in the failure colour."""
    share = 0.0 if top <= 0 else max(0.0, min(1.0, value / top))
    return Markup('<svg class="meter {}" viewBox="0 0 100 8" preserveAspectRatio="none" '
                  'role="img" aria-label="{}"><rect width="{:.1f}" height="8"/></svg>'
                  ).format(kind, label, share * 100)


def seconds(value: float | None) -> str:
    """A duration in seconds as people read it (`4.2 s`, `3 min 05 s`); `-` for none."""
    return "-" if value is None else duration(timedelta(seconds=value))


def percent(value: float | None) -> str:
    """A share as a percentage: `99.5 %`, `100 %`; `-` for none."""
    if value is None:
        return "-"
    shown = f"{value * 100:.1f}".removesuffix(".0")
    if shown == "100" and value < 1:
        shown = "99.9"  # never round a miss away
    return f"{shown} %"


def nice_ceiling(value: float) -> int:
    """The smallest of 1, 2, 5 × 10^k at or above `value` (at least 1): an axis's top."""
    if value <= 1:
        return 1
    power = 10 ** math.floor(math.log10(value))
    return next(int(m * power) for m in (1, 2, 5, 10) if m * power >= value)


# -- the frame --------------------------------------------------------------------------

def _figure(label: str, summary: str, top: int, labels: Sequence[str], step: float,
            body: str, names: Sequence[str], kind: str = "columns") -> Markup:
    bottom = HEIGHT - BOTTOM
    grid = []
    for tick in (0, top / 2, top):
        y = _y(tick, top)
        grid.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" '
                    f'y2="{y:.1f}"/><text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" '
                    f'text-anchor="end">{_number(tick)}</text>')
    for i in range(0, len(labels), LABEL_EVERY):
        x = LEFT + (i + 0.5) * step
        grid.append(f'<text class="tick" x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">'
                    f"{escape(labels[i])}</text>")
    legend = "".join(f'<li><span class="swatch series-{escape(n)}" aria-hidden="true"></span>'
                     f"{escape(n)}</li>" for n in names)
    empty = '<p class="muted">Nothing in this window.</p>' if not names else ""
    return Markup(
        f'<figure class="chart chart-{kind}">'
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(summary)}">'
        f'{"".join(grid)}{body}</svg>'
        f'<figcaption>{escape(label)}{empty}<ul class="legend">{legend}</ul></figcaption>'
        "</figure>")


def _summary(label: str, series: Mapping[str, Sequence[int]], names: Sequence[str]) -> str:
    parts = [f"{sum(series[n])} {n}" for n in names]
    return f"{label}: " + (", ".join(parts) if parts else "none")


def _ordered(series: Mapping[str, Sequence[int]], order: Sequence[str]) -> list[str]:
    """The series with any value, those named in `order` first, in that order."""
    present = [n for n in series if any(series[n])]
    return [n for n in order if n in present] + sorted(n for n in present if n not in order)


def _plot_width() -> int:
    return WIDTH - LEFT - RIGHT


def _y(value: float, top: float) -> float:
    return HEIGHT - BOTTOM - (HEIGHT - BOTTOM - TOP) * (value / top if top else 0)


def _number(value: float) -> str:
    return f"{value:g}" if value < 10_000 else f"{value / 1000:g}k"
