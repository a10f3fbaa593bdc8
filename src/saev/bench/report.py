"""A scorecard's outputs: report.json, a terminal table, and an offline index.html comparing the SAEs
metric by metric with their intervals, with a sparsity/fidelity plot."""

import base64
import html
import io
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import matplotlib

from saev.bench.run import Scorecard
from saev.bench.stats import Metric
from saev.fileio import atomic_open, write_json

DIRECTION = {True: "higher is better", False: "lower is better", None: "descriptive"}
VALIDATION = pathlib.Path(__file__).with_name("validation.json")
"""Each metric's agreement with ground truth in the built-in world, as `python -m
benchmarks.bench_validation` measured it (Spearman rho against concept recovery, reseed noise)."""


def validation() -> dict[str, dict[str, Any]]:
    """metric name -> {"rho", "noise", "verdict"}; empty when the file is absent."""
    if not VALIDATION.is_file():
        return {}
    data = json.loads(VALIDATION.read_text())
    return data.get("metrics", {}) if isinstance(data, dict) else {}


def verdict(name: str, found: dict[str, dict[str, Any]]) -> str:
    v = found.get(name)
    if not v:
        return "not validated"
    rho = v.get("rho")
    return v["verdict"] + ("" if rho is None else f" (rho {rho:+.2f})")


GROUPS = (
    "reconstruction",
    "sparsity",
    "spatial",
    "probing",
    "detection",
    "monosemanticity",
    "absorption",
    "steering",
    "stability",
)
"""The families in the order docs/bench.md numbers them."""


def rows(cards: Sequence[Scorecard]) -> list[str]:
    """Metric names grouped by family, in the order they first appear within each."""
    metrics = {m.name: m.group for card in cards for m in card.metrics}
    order = {g: i for i, g in enumerate(GROUPS)}
    return sorted(metrics, key=lambda name: order.get(metrics[name], len(GROUPS)))


def lookup(card: Scorecard, name: str) -> Metric | None:
    return next((m for m in card.metrics if m.name == name), None)


def best(cards: Sequence[Scorecard], name: str) -> set[int]:
    """Indices of the SAEs whose interval lies wholly beyond every other's on this metric."""
    found = [lookup(c, name) for c in cards]
    if len(cards) < 2 or any(m is None or m.estimate.low is None for m in found):
        return set()
    higher = found[0].higher_is_better  # type: ignore[union-attr]
    if higher is None:
        return set()
    out = set()
    for i, m in enumerate(found):
        others = [o for j, o in enumerate(found) if j != i]
        if higher and all(m.estimate.low > o.estimate.high for o in others):  # type: ignore[operator,union-attr]
            out.add(i)
        if not higher and all(m.estimate.high < o.estimate.low for o in others):  # type: ignore[operator,union-attr]
            out.add(i)
    return out


def table(cards: Sequence[Scorecard]) -> str:
    """Markdown table: one row per metric, one column per SAE (value [95% interval])."""
    names = [f"SAE {i + 1}" for i in range(len(cards))]
    checked = validation()
    lines = [
        "| metric | better | " + " | ".join(names) + " | baseline (SAE 1) | validation |",
        "|---|---|" + "---|" * len(cards) + "---|---|",
    ]
    for name in rows(cards):
        found = [lookup(c, name) for c in cards]
        first = next(m for m in found if m is not None)
        winners = best(cards, name)
        cells = [
            "-" if m is None else ("**" + m.estimate.text() + "**" if i in winners else m.estimate.text())
            for i, m in enumerate(found)
        ]
        base = found[0].baseline.text() if found[0] is not None and found[0].baseline is not None else ""
        arrow = {True: "up", False: "down", None: ""}[first.higher_is_better]
        lines.append(f"| {name} | {arrow} | " + " | ".join(cells) + f" | {base} | {verdict(name, checked)} |")
    lines.append("")
    lines += [f"SAE {i + 1}: {c.sae} ({c.n_images} images, {c.seconds:.0f} s)" for i, c in enumerate(cards)]
    skipped = {k: v for c in cards for k, v in c.skipped.items()}
    lines += [f"skipped {k}: {v}" for k, v in skipped.items()]
    return "\n".join(lines)


def write(cards: Sequence[Scorecard], out: pathlib.Path, settings: dict[str, Any]) -> pathlib.Path:
    """report.json, frontier.png and index.html in `out`; returns the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    report = out / "report.json"
    write_json(report, {"settings": settings, "saes": [c.to_json() for c in cards]})
    png = _frontier(cards)
    with atomic_open(out / "frontier.png", "wb") as f:
        f.write(png)
    page = _page(cards, base64.b64encode(png).decode())
    with atomic_open(out / "index.html", "w") as f:
        f.write(page)
    return report


def _frontier(cards: Sequence[Scorecard]) -> bytes:
    """L0 against FVU, one point per SAE with its intervals: the sparsity/fidelity trade-off."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pyplot (0.4 s) only when a plot is drawn

    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=110)
    for i, card in enumerate(cards):
        l0, f = lookup(card, "l0"), lookup(card, "fvu")
        if l0 is None or f is None or l0.estimate.value is None or f.estimate.value is None:
            continue
        xe = _err(l0)
        ye = _err(f)
        ax.errorbar(
            l0.estimate.value, f.estimate.value, xerr=xe, yerr=ye, fmt="o", capsize=3, label=f"SAE {i + 1}"
        )
        ax.annotate(
            f"{i + 1}", (l0.estimate.value, f.estimate.value), textcoords="offset points", xytext=(6, 4)
        )
    ax.set_xlabel("L0 (active latents per patch)")
    ax.set_ylabel("FVU (held-out patches; lower is better)")
    ax.set_title("Sparsity against fidelity")
    ax.grid(alpha=0.3)
    if cards:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _err(m: Metric) -> list[list[float]] | None:
    e = m.estimate
    if e.low is None or e.high is None or e.value is None:
        return None
    return [[max(e.value - e.low, 0.0)], [max(e.high - e.value, 0.0)]]


def _page(cards: Sequence[Scorecard], png_b64: str) -> str:
    head = "".join(f"<th>SAE {i + 1}</th>" for i in range(len(cards)))
    checked = validation()
    body = []
    group = None
    for name in rows(cards):
        found = [lookup(c, name) for c in cards]
        first = next(m for m in found if m is not None)
        if first.group != group:
            group = first.group
            body.append(f'<tr class="group"><th colspan="{len(cards) + 4}">{html.escape(group)}</th></tr>')
        winners = best(cards, name)
        cells = "".join(_cell(m, i in winners) for i, m in enumerate(found))
        shown = found[0]  # the first SAE's baseline
        base_text = (
            ""
            if shown is None or shown.baseline is None
            else f"{html.escape(shown.baseline.text())}<br><small>{html.escape(shown.baseline_name)}</small>"
        )
        body.append(
            f"<tr><td>{html.escape(name)}</td><td>{DIRECTION[first.higher_is_better]}</td>{cells}<td>{base_text}</td>"
            f"<td>{html.escape(verdict(name, checked))}</td></tr>"
        )
    saes = "".join(
        f"<li>SAE {i + 1}: <code>{html.escape(c.sae)}</code>: {c.n_images} images, {c.seconds:.0f} s</li>"
        for i, c in enumerate(cards)
    )
    skipped = {k: v for c in cards for k, v in c.skipped.items()}
    skips = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in skipped.items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>saev bench</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }}
tr.group th {{ background: #eef; }}
td.best {{ background: #dfd; font-weight: bold; }}
small {{ color: #666; }}
</style></head><body>
<h1>SAE scorecard</h1>
<p>Each value with its 95% bootstrap interval over images (n below it). A green cell's interval
lies beyond every other SAE's. Definitions: <code>docs/bench.md</code>. The last column says whether
the metric tracked ground-truth concept recovery across SAEs of known quality in saev's built-in
world (Spearman rho; <code>python -m benchmarks.bench_validation</code>): read a metric that
"fails" there as a description, not a verdict on quality.</p>
<ul>{saes}</ul>
<table><tr><th>metric</th><th>direction</th>{head}<th>baseline (SAE 1)</th><th>validation</th></tr>
{"".join(body)}
</table>
<h2>Sparsity and fidelity</h2>
<img alt="L0 against FVU for each SAE" src="data:image/png;base64,{png_b64}">
<h2>Skipped</h2><ul>{skips or "<li>nothing</li>"}</ul>
</body></html>
"""


def _cell(m: Metric | None, winner: bool) -> str:
    if m is None:
        return "<td>-</td>"
    e = m.estimate
    cls = ' class="best"' if winner else ""
    return f"<td{cls}>{html.escape(e.text())}<br><small>n = {e.n} {html.escape(e.unit)}</small></td>"
