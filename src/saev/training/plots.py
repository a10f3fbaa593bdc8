"""Pictures of training: one run's curves and a sweep's sparsity/fidelity frontier, as PNG files."""

import dataclasses
import json
import math
import os
import pathlib
import textwrap
from collections.abc import Sequence
from typing import Any

from saev.fileio import atomic_open
from saev.training.config import TrainConfig, varying_settings
from saev.training.results import RunResult

CURVES = "curves.png"
"""A run's training curves, in its folder."""
SWEEP = "sweep.png"
"""A sweep's frontier, in its parent folder (`--out`)."""


@dataclasses.dataclass(frozen=True)
class Panel:
    title: str
    ylabel: str
    lines: tuple[tuple[str, str], ...]
    """(metrics.jsonl key, legend label) of each line."""


CURVE_PANELS = (
    Panel("MSE (normalised)", "MSE", (("mse", "MSE"),)),
    Panel("L0 (active latents per token)", "L0", (("l0", "L0"),)),
    Panel("loss terms besides the MSE", "loss term", (("sparsity", "sparsity penalty"), ("aux", "AuxK"))),
    Panel("dead latents", "% of latents", (("dead_frac", "in training"),)),
)
"""One quantity per panel: the training loss is the MSE plus the third panel's terms (the mean of
the prefixes' MSEs for Matryoshka SAEs), so it has no panel of its own."""
LEGEND_WIDTH = 48
"""Characters per legend line: the dead-latent labels are long, and a legend wider than its panel
would cover the next one."""
MAX_LABELS = 20
"""Sweeps with more runs label only their frontier points, so the labels stay readable."""


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The lines of a metrics.jsonl; a partly written last line (a killed run) is skipped."""
    rows = []
    for line in pathlib.Path(path).read_text().splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))  # json reads the NaN and Infinity that json.dumps writes
        except json.JSONDecodeError:
            continue
    return rows


@dataclasses.dataclass(frozen=True)
class DeadCounts:
    """A run's two dead fractions, each with the tokens it counts: they differ, so neither is
    shown without saying which it is."""

    training: float | None
    """Last logged share of latents silent for the last `window` training tokens (AuxK's dead latents)."""
    window: int | None
    """--dead-tokens of the run (None when its config.json is unreadable)."""
    trained_tokens: int | None
    held_out: float | None
    """Share of latents that never fired on the `held_out_tokens` held-out tokens (eval.json's n_dead)."""
    held_out_tokens: int | None

    def training_label(self) -> str:
        window = (
            f"the last {_tokens(self.window)} training tokens" if self.window else "the --dead-tokens window"
        )
        label = f"in training: silent for {window}"
        if self.window and self.trained_tokens is not None and self.trained_tokens < self.window:
            label += f" (longer than the run's {_tokens(self.trained_tokens)}: none can die)"
        return label

    def held_out_label(self) -> str | None:
        if self.held_out is None:
            return None
        return f"held out: never fired on the {_tokens(self.held_out_tokens)} held-out tokens (eval.json)"


def dead_counts(run_dir: str | os.PathLike) -> DeadCounts:
    """The dead fractions of the run in RUN_DIR: its last metrics line's and its eval.json's."""
    run_dir = pathlib.Path(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    last = next((r["dead_frac"] for r in reversed(rows) if math.isfinite(_number(r.get("dead_frac")))), None)
    config = _read_json(run_dir / "config.json")
    window = (config.get("config") or {}).get("dead_tokens")
    tokens = rows[-1].get("tokens") if rows else None
    ev = _read_json(run_dir / "eval.json")
    n_latents = len(ev.get("freq") or ())
    held_out = ev["n_dead"] / n_latents if n_latents and isinstance(ev.get("n_dead"), int) else None
    return DeadCounts(
        last,
        window if isinstance(window, int) else None,
        tokens if isinstance(tokens, int) else None,
        held_out,
        ev.get("n_tokens") if held_out is not None else None,
    )


def write_run_plots(run_dir: str | os.PathLike) -> pathlib.Path:
    """MSE, L0, the other loss terms and the dead latents against training tokens, from
    RUN_DIR/metrics.jsonl, as RUN_DIR/curves.png; the dead panel also marks the held-out dead
    fraction of RUN_DIR/eval.json, each labelled with the tokens it counts (`DeadCounts`).

    Non-finite values are left out of the lines and counted in the title; a key an older run did
    not log is left out silently.
    """
    from matplotlib.figure import Figure  # 0.4 s to import: only commands that draw pay for it

    run_dir = pathlib.Path(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl")
    dead = dead_counts(run_dir)
    settings = _read_json(run_dir / "config.json").get("config") or {}
    x = [_number(row.get("tokens")) for row in rows]
    fig = Figure(figsize=(11, 7.5), dpi=100, layout="constrained")
    not_finite: dict[str, int] = {}
    use_log_x = _log_scale([v for v in x if math.isfinite(v)])
    for ax, panel in zip(fig.subplots(2, 2).flat, CURVE_PANELS, strict=True):
        is_dead = panel is CURVE_PANELS[-1]
        finals, drawn, top = [], 0, 0.0
        # The second line is dashed, so where both are equal (often both 0) the first shows through.
        for (key, label), (colour, style) in zip(
            panel.lines, (("tab:blue", "-"), ("tab:orange", "--")), strict=False
        ):
            logged = [(a, _number(row[key])) for a, row in zip(x, rows, strict=True) if key in row]
            pairs = [(a, b) for a, b in logged if math.isfinite(a) and math.isfinite(b)]
            if len(logged) > len(pairs):
                not_finite[key] = len(logged) - len(pairs)
            xs, ys = [a for a, _ in pairs], [100 * b if is_dead else b for _, b in pairs]
            drawn += len(xs)
            top = max([top, *ys])
            if key == "aux" and settings.get("arch") == "gated":
                label = "frozen-decoder loss"  # gated's auxiliary term; AuxK is the TopK family's
            # Few points: markers, so that one logged step is still visible (a line needs two).
            ax.plot(
                xs,
                ys,
                color=colour,
                linestyle=style,
                linewidth=1.5,
                marker=("o" if style == "-" else "x") if len(xs) <= 30 else None,
                markersize=4,
                label=textwrap.fill(dead.training_label(), LEGEND_WIDTH) if is_dead else label,
            )
            final = f"{ys[-1]:.4g}{'%' if is_dead else ''}" if ys else "-"
            finals.append(f"{label} {final}" if len(panel.lines) > 1 or is_dead else f"last {final}")
            if key == "mse" and _log_scale(ys):
                ax.set_yscale("log")
        if is_dead and dead.held_out is not None and rows and math.isfinite(x[-1]):
            label = textwrap.fill(dead.held_out_label() or "", LEGEND_WIDTH)
            ax.plot([x[-1]], [100 * dead.held_out], "D", color="black", markersize=7, label=label)
            finals.append(f"held out {100 * dead.held_out:.4g}%")
            top = max(top, 100 * dead.held_out)
        if panel.lines[0][0] == "l0" and math.isfinite(_number(settings.get("target_l0"))):
            finals.append(f"target {settings['target_l0']:g}")
            _draw_target(ax, settings["target_l0"], x, rows)
        missing = sum(not_finite.get(key, 0) for key, _ in panel.lines)
        ax.set_title(  # the figures on a line of their own: a long one would run past the panel
            f"{panel.title}\n{', '.join(finals)}" + (f"\n{missing} not finite, not drawn" if missing else "")
        )
        ax.set_xlabel("training tokens")
        ax.set_ylabel(panel.ylabel)
        ax.grid(True, which="major", alpha=0.3)
        if use_log_x:
            _log_tokens_axis(ax.xaxis, ax.set_xscale)
        else:  # 200k, not 200000: six-digit labels run into each other
            _tokens_axis(ax.xaxis)
        if is_dead:  # a few dead latents stay visible: the axis reaches 100% only when they are many
            top = min(100.0, max(5.0, 1.15 * top))
            ax.set_ylim(-top / 50, top)
        if drawn and (is_dead or len(ax.get_legend_handles_labels()[1]) > 1):
            ax.legend(fontsize=8, loc="best")
        if not drawn:
            any_logged = any(key in row for row in rows for key, _ in panel.lines)
            empty = "no finite values logged" if any_logged else "not logged by this run"
            ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes)
    run_id = _run_id(run_dir)
    steps = f"{len(rows)} logged step{'s' if len(rows) != 1 else ''}"
    if rows:
        steps += f", {rows[-1].get('step', '?')} steps, {_tokens(rows[-1].get('tokens'))} tokens"
    title = f"{run_id}\n{steps}"
    if not_finite:
        title += "\nsome values are not finite and are not drawn: " + ", ".join(
            f"{k} ({n})" for k, n in not_finite.items()
        )
    fig.suptitle(title, color="firebrick" if not_finite else "black")
    return _save(fig, run_dir / CURVES)


def _draw_target(ax: Any, target: float, x: list[float], rows: list[dict[str, Any]]) -> None:
    """The target L0 as a dashed line and, for a coefficient adapted to it, the coefficient on a
    second (log) axis: the picture shows whether, and when, the L0 met its target."""
    # Under the L0 line (zorder): where they coincide (k = the target) the L0 stays visible.
    ax.axhline(
        target, color="black", linestyle="--", linewidth=1.2, zorder=1.5, label=f"target L0 {target:g}"
    )
    lo, hi = ax.get_ylim()
    ax.set_ylim(min(lo, 0.9 * target), max(hi, 1.1 * target))
    coeff = [(a, _number(row.get("sparsity_coeff"))) for a, row in zip(x, rows, strict=True)]
    coeff = [(a, c) for a, c in coeff if math.isfinite(a) and math.isfinite(c) and c > 0]
    if len({c for _, c in coeff}) < 2:  # k = the target: no coefficient moved
        return
    twin = ax.twinx()
    twin.plot(*zip(*coeff, strict=True), color="tab:green", linewidth=1, alpha=0.8)
    twin.set_yscale("log")
    twin.set_ylabel("sparsity coefficient (adapted)", color="tab:green")
    twin.tick_params(axis="y", colors="tab:green")
    ax.plot([], [], color="tab:green", linewidth=1, label="coefficient (right axis)")


def write_sweep_plot(results: Sequence[RunResult], out: str | os.PathLike) -> pathlib.Path | None:
    """Held-out L0 against FVE and against MSE, one labelled point per run, Pareto frontier
    highlighted, as OUT/sweep.png; None (and no file) for a single run or when no run has
    held-out metrics."""
    evaluated = [(r, r.eval) for r in results if r.eval is not None]
    if len(results) < 2 or not evaluated:
        return None
    from matplotlib.figure import Figure  # 0.4 s to import: only commands that draw pay for it

    varying = varying_settings([r.config for r in results])
    arches = sorted({r.config.arch for r, _ in evaluated})
    colours = {arch: f"C{i % 10}" for i, arch in enumerate(arches)}
    fig = Figure(figsize=(14, 6.5), dpi=100, layout="constrained")
    panels = (
        ("fve", "FVE (fraction of variance explained; higher is better)", True),
        ("mse", "MSE (normalised; lower is better)", False),
    )
    # One L0 scale for both panels, so that a run sits at the same x in each.
    log_x = _log_scale([e.l0 for _, e in evaluated if math.isfinite(e.l0)])
    for ax, (key, ylabel, maximize) in zip(fig.subplots(1, 2), panels, strict=True):
        points = [
            (r, e.l0, getattr(e, key))
            for r, e in evaluated
            if math.isfinite(e.l0) and math.isfinite(getattr(e, key))
        ]
        log_y = not maximize and _log_scale([y for _, _, y in points])
        _frontier_panel(ax, points, maximize, varying, colours, log_x, log_y)
        ax.set_xlabel("L0 (active latents per held-out token)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"L0 vs {key.upper()}" + _left_out(len(evaluated) - len(points), key))
        ax.grid(True, alpha=0.3)
        if log_x:
            _log2_axis(ax.xaxis, ax.set_xscale)  # L0 sweeps usually double k: 1, 2, 4, 8...
        if log_y:
            ax.set_yscale("log")
        ax.margins(x=0.2, y=0.12)  # room for the labels beside the points
        ax.legend(fontsize=8, loc="best")
        if not points:
            ax.text(0.5, 0.5, f"no finite held-out {key}", ha="center", va="center", transform=ax.transAxes)
    title = f"sparsity vs fidelity on held-out tokens: {len(evaluated)} runs in {pathlib.Path(out)}"
    if len(evaluated) < len(results):
        title += f"\n{len(results) - len(evaluated)} run(s) without held-out metrics not shown"
    fig.suptitle(title)
    return _save(fig, pathlib.Path(out) / SWEEP)


def _frontier_panel(
    ax: Any,
    points: list[tuple[RunResult, float, float]],
    maximize: bool,
    varying: list[str],
    colours: dict[str, str],
    log_x: bool,
    log_y: bool,
) -> None:
    """Each run as a point (filled on the Pareto frontier, hollow off it), labelled; the frontier dashed."""
    front = set(pareto_front([(x, y) for _, x, y in points], maximize_y=maximize))
    ordered = sorted(front, key=lambda i: points[i][1])
    ax.plot(
        [points[i][1] for i in ordered],
        [points[i][2] for i in ordered],
        color="black",
        linestyle="--",
        linewidth=1,
        zorder=1,
        label="Pareto frontier",
    )
    # Runs that land on the same point (a setting the architecture ignores) share one label.
    groups: dict[tuple[float, float], list[int]] = {}
    for i, (_, x, y) in enumerate(points):
        groups.setdefault((x, y), []).append(i)
    left = _label_sides(list(groups), log_x, log_y)
    for ((x, y), members), on_left in zip(groups.items(), left, strict=True):
        on_front = members[0] in front
        colour = colours[points[members[0]][0].config.arch]
        ax.scatter(
            [x],
            [y],
            s=80 if on_front else 50,
            color=colour if on_front else "white",
            edgecolors=colour,
            linewidths=1.5,
            zorder=3,
        )
        if on_front or len(points) <= MAX_LABELS:
            ax.annotate(
                "\n".join(run_label(points[i][0].config, varying) for i in members),
                (x, y),
                xytext=(-7 if on_left else 7, 0),
                textcoords="offset points",
                ha="right" if on_left else "left",
                va="center",
                fontsize=8,
                fontweight="bold" if on_front else "normal",
            )
    for arch in sorted(colours):
        ax.scatter([], [], color=colours[arch], label=arch)
    ax.scatter([], [], color="white", edgecolors="grey", label="hollow: off the frontier")


def _label_sides(xy: list[tuple[float, float]], log_x: bool, log_y: bool) -> list[bool]:
    """Which labels go left of their point: placed from right to left, a label goes left when it
    would run into a point (and label) just to its right."""

    def unit(values: list[float], log: bool) -> list[float]:
        values = [math.log(v) if log else v for v in values]
        lo, hi = min(values, default=0.0), max(values, default=0.0)
        return [(v - lo) / (hi - lo) if hi > lo else 0.5 for v in values]

    us, vs = unit([x for x, _ in xy], log_x), unit([y for _, y in xy], log_y)
    left = [False] * len(xy)
    right: list[int] = []
    for i in sorted(range(len(xy)), key=lambda i: -us[i]):
        left[i] = any(us[j] - us[i] < 0.3 and abs(vs[i] - vs[j]) < 0.08 for j in right)
        if not left[i]:
            right.append(i)
    return left


def run_label(config: TrainConfig, varying: Sequence[str]) -> str:
    """The architecture and the settings that vary, e.g. "topk k=16"."""
    values = config.to_dict()
    # An option of another architecture than this run's is not one of its settings.
    parts = [config.arch] + [f"{k}={_value(values[k])}" for k in varying if k != "arch" and k in values]
    return " ".join(parts)


def pareto_front(points: Sequence[tuple[float, float]], *, maximize_y: bool = True) -> list[int]:
    """Indices of the points no other point beats: x (L0) as small or smaller and y as good or better,
    one of them strictly. Equal points are all kept. Points must be finite."""
    sign = 1 if maximize_y else -1
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -sign * points[i][1]))
    front: list[int] = []
    best = -math.inf
    for i in order:
        y = sign * points[i][1]
        if y > best or (front and points[i] == points[front[-1]]):
            front.append(i)
            best = max(best, y)
    return sorted(front)


def _save(fig: Any, path: pathlib.Path) -> pathlib.Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # 0.4 s to import, as above

    FigureCanvasAgg(fig)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")
    return path


def _left_out(n: int, key: str) -> str:
    return f" ({n} run{'s' if n != 1 else ''} with non-finite L0 or {key.upper()} not shown)" if n else ""


def _log2_axis(axis: Any, set_scale: Any) -> None:
    from matplotlib import ticker  # 0.4 s to import, as above

    set_scale("log", base=2)
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def _log_tokens_axis(axis: Any, set_scale: Any) -> None:
    """A log axis of token counts labelled 1k, 2k, 5k, 10k...: matplotlib's default labels every
    minor tick (3x10^3, 4x10^3...), which run into each other."""
    from matplotlib import ticker  # 0.4 s to import, as above

    set_scale("log")
    axis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: _tokens(v)))
    axis.set_minor_formatter(ticker.NullFormatter())


def _tokens_axis(axis: Any) -> None:
    """A linear axis of token counts labelled 200k, 400k... (at most 6 ticks)."""
    from matplotlib import ticker  # 0.4 s to import, as above

    axis.set_major_locator(ticker.MaxNLocator(nbins=6))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: _tokens(v)))


def _read_json(path: pathlib.Path) -> dict[str, Any]:
    """A run's JSON file, or {} where it is missing or unreadable (a run still training)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _run_id(run_dir: pathlib.Path) -> str:
    try:
        return json.loads((run_dir / "config.json").read_text())["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return run_dir.name  # the folder is named after the run


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def _log_scale(values: Sequence[float]) -> bool:
    """A log axis reads better when positive values span a factor of ten or more."""
    return bool(values) and min(values) > 0 and max(values) / min(values) >= 10


def _tokens(n: Any) -> str:
    n = _number(n)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}"


def _value(v: Any) -> str:
    if v is None:  # a setting left to its default (which may depend on the architecture)
        return "default"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list | tuple):
        return "/".join(str(x) for x in v) or "none"
    return str(v)
