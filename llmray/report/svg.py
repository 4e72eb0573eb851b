"""Small inline-SVG charts for the run report: a line chart (curves vs step) and a horizontal bar chart.

Data flow: numbers in -> `Axis` (a "nice" domain and tick values) -> SVG markup out, as one string.
No JavaScript is needed to read a chart: axes, tick labels, a title, axis labels and a legend are
all drawn here. Every chart and every series/bar carries stable `id` / `data-*` attributes
(`data-series`, `data-last`, `data-op`, `data-in`, `data-out` ...) so tests and the page's small
hover script can find them and read the exact numbers.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field

PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f"]
MAX_POINTS = 400  # per series; longer runs are thinned (first and last kept) to keep the page small


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def fmt_num(v) -> str:
    """Human-readable number: ints with thousands separators, floats to 4 significant digits."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if not math.isfinite(v):
        return str(v)
    if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-3):
        return f"{v:.3e}"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.4g}"


def nice_step(span: float, target: int = 5) -> float:
    """A 1/2/5 x 10^k step giving about `target` intervals over `span`."""
    if span <= 0 or not math.isfinite(span):
        return 1.0
    raw = span / target
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


@dataclass
class Axis:
    """A linear axis: data domain [lo, hi] widened to whole ticks, mapped onto pixels [p0, p1]."""

    lo: float
    hi: float
    p0: float
    p1: float
    ticks: list[float] = field(default_factory=list)

    @classmethod
    def fit(cls, values: list[float], p0: float, p1: float, *, zero: bool = False, pad: bool = True) -> Axis:
        lo, hi = min(values), max(values)
        if zero:
            lo = min(lo, 0.0)
        if hi == lo:  # a flat series still needs a visible range
            d = abs(hi) * 0.1 or 1.0
            lo, hi = lo - d, hi + d
        step = nice_step(hi - lo)
        if pad:
            lo, hi = math.floor(lo / step) * step, math.ceil(hi / step) * step
        first = math.ceil(lo / step - 1e-9) * step
        ticks = [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]
        return cls(lo, hi, p0, p1, ticks)

    def __call__(self, v: float) -> float:
        return self.p0 + (v - self.lo) / (self.hi - self.lo) * (self.p1 - self.p0)


def _tick_label(v: float, step: float) -> str:
    if abs(v) < step * 1e-6:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        return f"{v:.2g}"
    decimals = max(0, -math.floor(math.log10(step))) if step < 1 else 0
    return f"{v:,.{decimals}f}"


def thin(points: list[tuple[float, float]], limit: int = MAX_POINTS) -> list[tuple[float, float]]:
    """At most `limit` points, evenly strided, always keeping the last one."""
    if len(points) <= limit:
        return points
    stride = math.ceil(len(points) / limit)
    out = points[::stride]
    return out if out[-1] == points[-1] else out + [points[-1]]


def _legend(names: list[str], right: float, y: float) -> tuple[str, float]:
    """Legend entries right-aligned from `right`, wrapping onto new rows; returns (svg, height)."""
    parts, x, row = [], right, 0
    for i, name in enumerate(reversed(names)):
        width = 22 + 7 * len(name)
        if x - width < right * 0.45 and x != right:  # keep clear of the title on the left
            x, row = right, row + 1
        x -= width
        color = PALETTE[(len(names) - 1 - i) % len(PALETTE)]
        yy = y + row * 16
        parts.append(
            f'<g class="legend-item" data-series="{esc(name)}">'
            f'<rect x="{x:.0f}" y="{yy - 8:.0f}" width="12" height="4" fill="{color}"/>'
            f'<text x="{x + 16:.0f}" y="{yy:.0f}" class="legend">{esc(name)}</text></g>'
        )
        x -= 8
    return "".join(parts), (row + 1) * 16


def line_chart(
    series: dict[str, list[tuple[float, float]]],
    *,
    chart_id: str,
    title: str,
    x_label: str,
    y_label: str = "",
    width: int = 560,
    height: int = 300,
    attrs: dict | None = None,
) -> str:
    """Curves sharing one x axis. `series` maps a name to (x, y) points; empty series are dropped."""
    series = {k: sorted(v) for k, v in series.items() if v}
    legend, legend_h = _legend(list(series), width - 12, 22)
    left, right, top, bottom = 64, 14, 20 + legend_h + 6, 46
    xs = [p[0] for pts in series.values() for p in pts] or [0.0]
    ys = [p[1] for pts in series.values() for p in pts] or [0.0]
    xa = Axis.fit(xs, left, width - right, pad=False)
    ya = Axis.fit(ys, height - bottom, top)
    out = [
        _open(
            chart_id,
            "line",
            width,
            height,
            title,
            attrs,
            {
                "data-x0": xa.lo,
                "data-x1": xa.hi,
                "data-y0": ya.lo,
                "data-y1": ya.hi,
                "data-plot": f"{left},{top},{width - left - right},{height - top - bottom}",
            },
        )
    ]
    out.append(_axes(xa, ya, left, top, width - right, height - bottom, x_label, y_label, title))
    out.append(legend)
    for i, (name, pts) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        shown = thin(pts)
        coords = " ".join(f"{xa(x):.1f},{ya(y):.1f}" for x, y in shown)
        ys_all = [p[1] for p in pts]
        out.append(
            f'<g class="series" data-series="{esc(name)}" data-color="{color}" data-n="{len(pts)}" '
            f'data-first="{pts[0][1]!r}" data-last="{pts[-1][1]!r}" data-last-x="{pts[-1][0]!r}" '
            f'data-min="{min(ys_all)!r}" data-max="{max(ys_all)!r}" '
            f"data-points='{esc(json.dumps([[x, y] for x, y in shown]))}'>"
            f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.8" '
            f'stroke-linejoin="round"/>'
        )
        if len(shown) <= 40:  # few points: mark them, a sparse curve is otherwise hard to read
            out.extend(
                f'<circle cx="{xa(x):.1f}" cy="{ya(y):.1f}" r="2.5" fill="{color}"/>' for x, y in shown
            )
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)


def _open(
    chart_id: str, kind: str, width: int, height: int, title: str, attrs: dict | None, extra: dict
) -> str:
    more = {**extra, **(attrs or {})}
    extra_s = "".join(f' {k}="{esc(v)}"' for k, v in more.items())
    return (
        f'<svg id="{esc(chart_id)}" class="chart" data-chart="{kind}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{esc(title)}"{extra_s}>'
        f"<title>{esc(title)}</title>"
    )


def _axes(
    xa: Axis, ya: Axis, x0: float, y0: float, x1: float, y1: float, x_label: str, y_label: str, title: str
) -> str:
    """Grid, axis lines, tick labels, axis labels and the chart title."""
    parts = [f'<text x="{x0}" y="16" class="chart-title">{esc(title)}</text>']
    ystep = ya.ticks[1] - ya.ticks[0] if len(ya.ticks) > 1 else 1.0
    for t in ya.ticks:
        y = ya(t)
        parts.append(
            f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{x0 - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">'
            f"{_tick_label(t, ystep)}</text>"
        )
    xstep = xa.ticks[1] - xa.ticks[0] if len(xa.ticks) > 1 else 1.0
    for t in xa.ticks:
        if xa.lo - 1e-9 <= t <= xa.hi + 1e-9:
            x = xa(t)
            parts.append(
                f'<line x1="{x:.1f}" y1="{y1}" x2="{x:.1f}" y2="{y1 + 4}" class="axis"/>'
                f'<text x="{x:.1f}" y="{y1 + 17}" class="tick" text-anchor="middle">'
                f"{_tick_label(t, xstep)}</text>"
            )
    parts.append(
        f'<line x1="{x0}" y1="{y1}" x2="{x1}" y2="{y1}" class="axis x-axis"/>'
        f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" class="axis y-axis"/>'
        f'<text x="{(x0 + x1) / 2:.0f}" y="{y1 + 36}" class="axis-label x-label" '
        f'text-anchor="middle">{esc(x_label)}</text>'
    )
    if y_label:
        cy = (y0 + y1) / 2
        parts.append(
            f'<text x="14" y="{cy:.0f}" class="axis-label y-label" text-anchor="middle" '
            f'transform="rotate(-90 14 {cy:.0f})">{esc(y_label)}</text>'
        )
    return "".join(parts)


@dataclass
class Bar:
    """One row of a horizontal bar chart; `ghost` draws a faint longer bar behind (e.g. a stage's input)."""

    label: str
    value: float
    ghost: float | None = None
    note: str = ""
    attrs: dict = field(default_factory=dict)


def bar_chart(
    bars: list[Bar], *, chart_id: str, title: str, x_label: str, width: int = 620, attrs: dict | None = None
) -> str:
    """Horizontal bars, one per row, labelled on the left with the value written after each bar."""
    left, right, top, bottom, row_h = 150, 120, 30, 46, 26
    height = top + bottom + row_h * max(1, len(bars))
    values = [b.value for b in bars] + [b.ghost for b in bars if b.ghost is not None]
    xa = Axis.fit(values or [0.0], left, width - right, zero=True)
    ya = Axis(0, max(1, len(bars)), top, height - bottom)
    out = [_open(chart_id, "bar", width, height, title, attrs, {"data-x1": xa.hi})]
    out.append(
        _axes(
            xa,
            Axis(0, 1, height - bottom, top, []),
            left,
            top,
            width - right,
            height - bottom,
            x_label,
            "",
            title,
        )
    )
    for i, b in enumerate(bars):
        y = ya(i) + 4
        h = row_h - 8
        extra = "".join(f' {k}="{esc(v)}"' for k, v in b.attrs.items())
        label = b.label if len(b.label) <= 20 else b.label[:19] + "…"
        out.append(
            f'<g class="bar" data-label="{esc(b.label)}" data-value="{b.value!r}"{extra}>'
            f"<title>{esc(b.label)}: {fmt_num(b.value)} {esc(b.note)}</title>"
        )
        if b.ghost is not None:
            out.append(
                f'<rect class="bar-ghost" x="{left}" y="{y:.1f}" width="{xa(b.ghost) - left:.1f}" '
                f'height="{h}"/>'
            )
        out.append(
            f'<rect class="bar-fill" x="{left}" y="{y:.1f}" width="{max(0.5, xa(b.value) - left):.1f}" '
            f'height="{h}" fill="{PALETTE[0]}"/>'
            f'<text x="{left - 8}" y="{y + h / 2 + 4:.1f}" class="bar-label" text-anchor="end">'
            f"{esc(label)}</text>"
            f'<text x="{max(xa(b.value), xa(b.ghost or 0)) + 6:.1f}" y="{y + h / 2 + 4:.1f}" '
            f'class="bar-value">{fmt_num(b.value)} {esc(b.note)}</text></g>'
        )
    out.append("</svg>")
    return "".join(out)
