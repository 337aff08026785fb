"""Inline SVG plots, generated here: they work offline (no CDN, no JavaScript library).

Every text that comes from the store is escaped. Points carry a <title> (the
browser shows it on hover) and `data-trial`, which the page script uses to
highlight a trial's path in the reuse tree.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

from dashboard.views import TreeNode
from flows.run_records import StudyRecord, round_sig

__all__ = ["REUSE_COLORS", "cost_svg", "progress_svg", "reuse_color", "tree_svg"]

# stages reused by a trial: 0 (all computed) .. 4 (all cached); same as flows.tune's PNG
REUSE_COLORS = ("#e45756", "#f58518", "#eeca3b", "#72b7b2", "#54a24b")
FONT = "font-family='system-ui,-apple-system,Segoe UI,Roboto,sans-serif'"


def reuse_color(n: int) -> str:
    return REUSE_COLORS[max(0, min(n, len(REUSE_COLORS) - 1))]


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    out, v = [], first
    while v <= hi + step * 1e-6:
        out.append(round(v, 12))
        v += step
    return out


def _fmt_ticks(ticks: list[float]) -> list[str]:
    """Tick labels with just enough digits to tell neighbours apart."""
    if not ticks:
        return []
    if all(float(v).is_integer() for v in ticks) and max(abs(v) for v in ticks) < 1e7:
        return [f"{v:.0f}" for v in ticks]
    top = max(abs(v) for v in ticks) or 1.0
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else top
    digits = max(1, min(8, math.floor(math.log10(top)) - math.floor(math.log10(step)) + 2))
    return [f"{v:.{digits}g}" for v in ticks]


class _Chart:
    """A plot area with linear axes, ticks and labels."""

    def __init__(self, xs: list[float], ys: list[float], *, width: int = 560, height: int = 300,
                 xlabel: str, ylabel: str, x_from_zero: bool = True) -> None:
        self.w, self.h = width, height
        self.left, self.right, self.top, self.bottom = 58, 16, 14, 44
        x0 = 0.0 if x_from_zero else min(xs, default=0.0)
        x1 = max(xs, default=1.0)
        y0, y1 = min(ys, default=0.0), max(ys, default=1.0)
        if x1 <= x0:
            x1 = x0 + 1.0
        if y1 - y0 < 1e-9:
            pad = abs(y0) * 0.05 or 0.05
            y0, y1 = y0 - pad, y1 + pad
        pad_y = (y1 - y0) * 0.08
        self.x0, self.x1 = x0, x1 + (x1 - x0) * 0.04
        self.y0, self.y1 = y0 - pad_y, y1 + pad_y
        self.parts: list[str] = []
        self.labels: list[tuple[float, float, float, float]] = []  # placed label boxes
        widest = max((len(t) for t in _fmt_ticks(_ticks(self.y0, self.y1))), default=4)
        self.left = max(50, int(5.8 * widest) + 30)  # room for tick labels and the axis title
        self._axes(xlabel, ylabel)

    def label_at(self, px: float, py: float, text: str) -> tuple[float, float]:
        """Where a point's label goes: the first spot beside it that overlaps no other."""
        w, h = 5.6 * len(text) + 1, 9.0
        spots = [(7, -6), (7, 10), (-7 - w, -6), (-7 - w, 10), (7, -16), (-7 - w, -16),
                 (7, 20), (-7 - w, 20)]
        for dx, dy in spots:
            box = (px + dx, py + dy - h, px + dx + w, py + dy)
            if all(box[2] <= b[0] or box[0] >= b[2] or box[3] <= b[1] or box[1] >= b[3]
                   for b in self.labels):
                break
        self.labels.append(box)
        return box[0], box[3]

    def px(self, x: float) -> float:
        return self.left + (x - self.x0) / (self.x1 - self.x0) * (self.w - self.left - self.right)

    def py(self, y: float) -> float:
        return self.h - self.bottom - (y - self.y0) / (self.y1 - self.y0) * (
            self.h - self.top - self.bottom)

    def _axes(self, xlabel: str, ylabel: str) -> None:
        p = self.parts
        x0, r, t, b = self.left, self.w - self.right, self.top, self.h - self.bottom
        p.append(f"<rect x='{x0}' y='{t}' width='{r - x0}' height='{b - t}' fill='#fff' "
                 f"stroke='#c8ccd2'/>")
        xt = _ticks(self.x0, self.x1)
        for v, text in zip(xt, _fmt_ticks(xt), strict=True):
            x = self.px(v)
            p.append(f"<line x1='{x:.1f}' y1='{t}' x2='{x:.1f}' y2='{b}' stroke='#eef0f3'/>")
            p.append(f"<text x='{x:.1f}' y='{b + 15}' text-anchor='middle' class='tick'>"
                     f"{text}</text>")
        yt = _ticks(self.y0, self.y1)
        for v, text in zip(yt, _fmt_ticks(yt), strict=True):
            y = self.py(v)
            p.append(f"<line x1='{x0}' y1='{y:.1f}' x2='{r}' y2='{y:.1f}' stroke='#eef0f3'/>")
            p.append(f"<text x='{x0 - 6}' y='{y + 4:.1f}' text-anchor='end' class='tick'>"
                     f"{text}</text>")
        p.append(f"<text x='{(x0 + r) / 2:.0f}' y='{self.h - 8}' text-anchor='middle' "
                 f"class='axis'>{escape(xlabel)}</text>")
        p.append(f"<text transform='translate(14 {(t + b) / 2:.0f}) rotate(-90)' "
                 f"text-anchor='middle' class='axis'>{escape(ylabel)}</text>")

    def svg(self, css_class: str, label: str) -> str:
        style = ("<style>.tick{font-size:10px;fill:#666}.axis{font-size:11px;fill:#333}"
                 ".lbl{font-size:9px;fill:#555}</style>")
        return (f"<svg class='{css_class}' viewBox='0 0 {self.w} {self.h}' width='{self.w}' "
                f"height='{self.h}' role='img' aria-label='{escape(label)}' {FONT} "
                f"xmlns='http://www.w3.org/2000/svg'>{style}{''.join(self.parts)}</svg>")


def _point(c: _Chart, x: float, y: float, t: Any, title: str) -> str:
    all_cached = bool(t.stages) and t.n_reused == len(t.stages)
    color = reuse_color(t.n_reused)
    px, py = c.px(x), c.py(y)
    if all_cached:  # a diamond: every stage reused
        shape = (f"<path d='M{px:.1f} {py - 6:.1f} L{px + 6:.1f} {py:.1f} L{px:.1f} "
                 f"{py + 6:.1f} L{px - 6:.1f} {py:.1f} Z' fill='{color}' stroke='#333' "
                 f"stroke-width='0.7'/>")
    else:
        shape = (f"<circle cx='{px:.1f}' cy='{py:.1f}' r='5' fill='{color}' stroke='#333' "
                 f"stroke-width='0.7'/>")
    lx, ly = c.label_at(px, py, str(t.id))
    return (f"<g class='pt' data-trial='{t.id}' data-reused='{t.n_reused}'>"
            f"<title>{escape(title)}</title>{shape}"
            f"<text x='{lx:.1f}' y='{ly:.1f}' class='lbl'>{t.id}</text></g>")


def _title(t: Any) -> str:
    obj = "failed" if t.objective is None else f"{round_sig(t.objective)}"
    return (f"trial {t.id}: objective {obj}; {t.n_reused}/{len(t.stages)} stages reused; "
            f"cost {t.cost_s:.1f} s, saved {t.saved_s:.1f} s; budget spent {t.spent:.1f} s")


def progress_svg(rec: StudyRecord) -> str:
    """Best-so-far against budget spent, every trial's objective as a point."""
    done = [t for t in rec.trials if t.objective is not None]
    c = _Chart([t.spent for t in rec.trials], [t.objective for t in done],
               xlabel="budget spent (stage seconds)", ylabel="objective")
    pts = [(t.spent, b) for t, b in zip(rec.trials, rec.best_so_far(), strict=True)
           if b is not None]
    if pts:
        d = f"M{c.px(pts[0][0]):.1f} {c.py(pts[0][1]):.1f}"
        for x1, y1 in pts[1:]:
            d += f" H{c.px(x1):.1f} V{c.py(y1):.1f}"
        d += f" H{c.px(c.x1):.1f}"
        c.parts.append(f"<path class='best' d='{d}' fill='none' stroke='#4c78a8' "
                       f"stroke-width='2'/>")
    c.parts += [_point(c, t.spent, t.objective, t, _title(t)) for t in done]
    return c.svg("plot progress", f"best objective so far against budget spent, study {rec.study}")


def cost_svg(rec: StudyRecord) -> str:
    """Each trial's objective against what it cost (reused stages cost only their load)."""
    done = [t for t in rec.trials if t.objective is not None]
    c = _Chart([t.cost_s for t in done], [t.objective for t in done],
               xlabel="trial cost (stage seconds: compute + cache loads)", ylabel="objective")
    c.parts += [_point(c, t.cost_s, t.objective, t, _title(t)) for t in done]
    return c.svg("plot cost", f"objective against trial cost, study {rec.study}")


def legend_html(n_stages: int = 4) -> str:
    items = "".join(
        f"<span class='lg'><svg width='12' height='12'><circle cx='6' cy='6' r='5' "
        f"fill='{reuse_color(k)}' stroke='#333' stroke-width='0.7'/></svg> {k}</span>"
        for k in range(n_stages + 1))
    return f"<div class='legend'>stages reused by the trial: {items} (◆ all reused)</div>"


def _short_stage(name: str) -> str:
    return name.replace("_finetune", "").replace("_", " ")


def tree_svg(columns: list[list[TreeNode]], *, node_w: int = 168, node_h: int = 40,
             col_gap: int = 64, row_h: int = 50) -> str:
    """The reuse tree: a column per stage, a node per distinct key, an edge per parent.

    Node fill: green when trials reused the entry, orange when it was only
    computed; edge width: how many trials took it. Leaves name their trials.
    """
    if not columns:
        return "<p class='muted'>No trials yet.</p>"
    n_rows = int(max(n.y for col in columns for n in col)) + 1
    top = 30
    leaf_w = 130
    width = len(columns) * (node_w + col_gap) + leaf_w
    height = top + n_rows * row_h + 6
    parts: list[str] = [
        "<style>.node rect{stroke:#555;stroke-width:.8}.node text{font-size:11px;fill:#111}"
        ".node .sub{font-size:10px;fill:#333}.edge{stroke:#8a93a0;fill:none}"
        ".hdr{font-size:12px;font-weight:600;fill:#333}.leaf{font-size:11px;fill:#333}"
        ".node.hl rect{stroke:#1f6feb;stroke-width:3}.edge.hl{stroke:#1f6feb}"
        ".leaf.hl{fill:#1f6feb;font-weight:700}</style>"]

    def xy(n: TreeNode) -> tuple[float, float]:
        return n.depth * (node_w + col_gap) + 4, top + n.y * row_h + (row_h - node_h) / 2

    for depth, col in enumerate(columns):
        name = _short_stage(col[0].stage) if col else ""
        parts.append(f"<text class='hdr' x='{depth * (node_w + col_gap) + 4}' y='16'>"
                     f"{escape(name)} <tspan class='sub' font-weight='400'>({len(col)} "
                     f"{'key' if len(col) == 1 else 'keys'})</tspan></text>")
    for col in columns:
        for n in col:
            if n.parent is None:
                continue
            (px, py), (cx, cy) = xy(n.parent), xy(n)
            x1, y1, x2, y2 = px + node_w, py + node_h / 2, cx, cy + node_h / 2
            mid = (x1 + x2) / 2
            cls = " ".join(f"t{t}" for t in n.trials)
            parts.append(f"<path class='edge {cls}' d='M{x1:.1f} {y1:.1f} C{mid:.1f} {y1:.1f} "
                         f"{mid:.1f} {y2:.1f} {x2:.1f} {y2:.1f}' "
                         f"stroke-width='{1 + 1.5 * math.sqrt(len(n.trials)):.1f}'/>")
    for col in columns:
        for n in col:
            x, y = xy(n)
            reused = len(n.reused_by)
            fill = "#cfe9c9" if reused else "#fde2c4"
            if reused:
                sub = f"reused {reused}× · saved {n.saved_s:.1f} s"
            else:
                sub = f"computed · {n.compute_s:.1f} s"
            computed = (f"computed by trial {', '.join(map(str, n.computed_by))}"
                        if n.computed_by else "computed before this study")
            title = (f"{n.stage} {n.key}\n{computed}\nused by trials "
                     f"{', '.join(map(str, n.trials))}\nreused {reused}×, saved {n.saved_s:.1f} s")
            cls = " ".join(f"t{t}" for t in n.trials)
            parts.append(
                f"<g class='node {cls}' data-key='{escape(n.key)}' data-stage='{escape(n.stage)}'"
                f" data-depth='{n.depth}'"
                f" data-trials='{' '.join(map(str, n.trials))}'>"
                f"<title>{escape(title)}</title><a href='/entry/{escape(n.key)}'>"
                f"<rect x='{x:.1f}' y='{y:.1f}' rx='5' width='{node_w}' height='{node_h}' "
                f"fill='{fill}'/>"
                f"<text x='{x + 7:.1f}' y='{y + 16:.1f}' font-family='ui-monospace,monospace'>"
                f"{escape(n.key[:10])}</text>"
                f"<text class='sub' x='{x + 7:.1f}' y='{y + 31:.1f}'>{escape(sub)}</text></a></g>")
            if not n.children:
                label = "trial " if len(n.trials) == 1 else "trials "
                label += ", ".join(map(str, n.trials))
                cls = " ".join(f"t{t}" for t in n.trials)
                parts.append(f"<text class='leaf {cls}' x='{x + node_w + 8:.1f}' "
                             f"y='{y + node_h / 2 + 4:.1f}' data-trials='"
                             f"{' '.join(map(str, n.trials))}'>{escape(label)}</text>")
    return (f"<svg class='tree' viewBox='0 0 {width} {height}' width='{width}' height='{height}' "
            f"{FONT} role='img' aria-label='reuse tree' xmlns='http://www.w3.org/2000/svg'>"
            f"{''.join(parts)}</svg>")
