"""Training pictures: each run's curves and a sweep's sparsity/fidelity frontier, written by `saev train`."""

import itertools
import json
import math
import pathlib

import numpy as np
import pytest
from PIL import Image

from saev.cli import main
from saev.nn.evaluation import EvalResult
from saev.training import RunResult, TrainConfig, plots, results_table
from tests.ground_truth import make_dictionary_store

CURVE_BLUE = (31, 119, 180)
"""matplotlib's first colour: the curves, and the first architecture's points."""
WARNING_RED = (178, 34, 34)
"""The title's colour when some values are not finite."""


@pytest.fixture(scope="module")
def dictionary(tmp_path_factory):
    return make_dictionary_store(
        tmp_path_factory.mktemp("dict"), n_atoms=64, d=16, n_tokens=20_000, tokens_per_img=8
    )


def train_argv(dictionary, out: pathlib.Path, *extra: str) -> list[str]:
    """`saev train` on the dictionary store: 200 steps of 250 tokens, a metrics line every 10 steps."""
    settings = {
        "shards": dictionary.store,
        "out": out,
        "layer": 0,
        "exp-factor": 4,
        "k": 3,
        "n-train": 50_000,
        "batch-size": 250,
        "lr": 3e-3,
        "lr-warmup": 5,
        "log-every": 10,
    }
    argv = ["train"]
    for key, value in settings.items():
        argv += [f"--{key}", str(value)]
    return argv + list(extra)


def pixels(path: pathlib.Path) -> np.ndarray:
    """The PNG's RGB pixels, after checking it is a PNG of a sensible size with something drawn."""
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert 600 <= img.width <= 3000 and 400 <= img.height <= 3000
        rgb = np.asarray(img.convert("RGB")).astype(int)
    assert rgb.std() > 15  # not a blank page
    return rgb


def colour_count(rgb: np.ndarray, colour: tuple[int, int, int], tol: int = 40) -> int:
    return int((np.abs(rgb - np.array(colour)).sum(-1) < tol).sum())


def quadrants(rgb: np.ndarray) -> list[np.ndarray]:
    h, w = rgb.shape[0] // 2, rgb.shape[1] // 2
    return [rgb[:h, :w], rgb[:h, w:], rgb[h:, :w], rgb[h:, w:]]


def assert_no_temporary_files(folder: pathlib.Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_a_single_run_draws_its_curves_and_names_them_on_stderr(dictionary, tmp_path, capsys):
    out = tmp_path / "runs"
    main(train_argv(dictionary, out))
    std = capsys.readouterr()
    [ckpt] = std.out.strip().splitlines()  # stdout stays the checkpoint paths only
    assert ckpt.endswith("sae.safetensors")
    run_dir = pathlib.Path(ckpt).parent
    curves = run_dir / plots.CURVES
    assert str(curves) in std.err
    rgb = pixels(curves)
    assert all(colour_count(q, CURVE_BLUE) > 100 for q in quadrants(rgb))  # a curve in each panel
    assert colour_count(rgb, WARNING_RED) == 0  # every value was finite
    assert not (out / plots.SWEEP).exists() and "frontier" not in std.err  # one run: no frontier
    assert_no_temporary_files(run_dir)


@pytest.mark.slow
def test_a_sweep_draws_every_runs_curves_and_the_frontier(dictionary, tmp_path, capsys):
    out = tmp_path / "runs"
    sweep = tmp_path / "sweep.toml"
    sweep.write_text("k = [2, 4, 8]\n")
    main(train_argv(dictionary, out, "--sweep", str(sweep)))
    std = capsys.readouterr()
    ckpts = std.out.strip().splitlines()
    assert len(ckpts) == 3 and all(p.endswith("sae.safetensors") for p in ckpts)
    for ckpt in ckpts:
        curves = pathlib.Path(ckpt).parent / plots.CURVES
        assert str(curves) in std.err
        assert all(colour_count(q, CURVE_BLUE) > 100 for q in quadrants(pixels(curves)))
    frontier = out / plots.SWEEP
    assert f"frontier: {frontier}" in std.err
    rgb = pixels(frontier)
    half = rgb.shape[1] // 2
    # Three filled points (k trades sparsity for fidelity, so all are on the frontier) per panel.
    assert (
        colour_count(rgb[:, :half], CURVE_BLUE) > 3 * 40 and colour_count(rgb[:, half:], CURVE_BLUE) > 3 * 40
    )
    assert_no_temporary_files(out)
    assert "| run | k | MSE | FVE | L0 | dead | dense |" in std.err  # the table is still there


def test_a_run_with_one_logged_step_still_plots(dictionary, tmp_path, capsys):
    # 10 steps and a metrics line every 50: only the last step is logged.
    main(train_argv(dictionary, tmp_path / "runs", "--n-train", "2500", "--log-every", "50"))
    run_dir = pathlib.Path(capsys.readouterr().out.strip()).parent
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1
    rgb = pixels(run_dir / plots.CURVES)
    assert all(colour_count(q, CURVE_BLUE) > 10 for q in quadrants(rgb))  # one marker per panel


def blue_masks(rgb: np.ndarray) -> list[np.ndarray]:
    """Where each panel draws in the curves' blue, below its title."""
    return [(np.abs(q[60:] - np.array(CURVE_BLUE)).sum(-1) < 40) for q in quadrants(rgb)]


def test_each_panel_draws_its_own_quantity_and_both_dead_fractions_are_labelled(dictionary, tmp_path, capsys):
    # 16x latents and a 5,000-token dead window: some latents die in training and on held-out tokens.
    main(train_argv(dictionary, tmp_path / "runs", "--exp-factor", "16", "--dead-tokens", "5000"))
    run_dir = pathlib.Path(capsys.readouterr().out.strip()).parent
    assert len({key for panel in plots.CURVE_PANELS for key, _ in panel.lines}) == sum(
        len(panel.lines) for panel in plots.CURVE_PANELS
    )
    masks = blue_masks(pixels(run_dir / plots.CURVES))
    for a, b in itertools.combinations(range(4), 2):  # a duplicated panel draws the same pixels twice
        assert (masks[a] & masks[b]).sum() < 0.5 * min(masks[a].sum(), masks[b].sum()), (a, b)
    dead = plots.dead_counts(run_dir)
    ev = json.loads((run_dir / "eval.json").read_text())
    metrics = plots.read_metrics(run_dir / "metrics.jsonl")
    assert dead.held_out == ev["n_dead"] / len(ev["freq"]) and dead.held_out_tokens == ev["n_tokens"]
    assert dead.training == metrics[-1]["dead_frac"] and dead.window == 5000
    assert dead.training_label() == "in training: silent for the last 5k training tokens"
    assert (
        dead.held_out_label()
        == f"held out: never fired on the {ev['n_tokens'] / 1000:g}k held-out tokens (eval.json)"
    )
    # A window longer than the run: no latent can count as dead in training, and the label says so.
    short = plots.DeadCounts(0.0, 1_000_000, 50_000, None, None)
    assert short.training_label().endswith("(longer than the run's 50k: none can die)")
    assert short.held_out_label() is None


def write_metrics(run_dir: pathlib.Path, rows: list[dict], tail: str = "") -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows) + tail)


def metric_row(step: int, **kw: float) -> dict:
    row = {
        "step": step,
        "tokens": 100 * step,
        "loss": 1 / step,
        "mse": 0.9 / step,
        "l0": 5.0,
        "sparsity": 0.0,
        "aux": 0.01 / step,
        "dead_frac": 0.1,
    }
    return row | kw


def test_non_finite_metrics_are_left_out_and_flagged_in_the_title(tmp_path):
    run_dir = tmp_path / "run-nan"
    rows = [metric_row(s) for s in range(1, 40)]
    rows[3] |= {"loss": math.nan, "mse": math.nan}
    rows[10] |= {"l0": math.inf}
    write_metrics(run_dir, rows, tail='{"step": 40, "tok')  # a killed run's half-written line
    path = plots.write_run_plots(run_dir)
    assert path == run_dir / plots.CURVES
    rgb = pixels(path)
    assert all(colour_count(q, CURVE_BLUE) > 100 for q in quadrants(rgb))
    assert colour_count(rgb[:60], WARNING_RED) > 50  # the title turns red

    only_nan = tmp_path / "run-all-nan"
    write_metrics(only_nan, [metric_row(1, loss=math.nan, mse=math.nan, l0=math.nan, dead_frac=math.nan)])
    rgb = pixels(plots.write_run_plots(only_nan))
    assert colour_count(rgb[:60], WARNING_RED) > 50
    assert_no_temporary_files(only_nan)


def brute_force_front(points: list[tuple[float, float]], maximize_y: bool) -> list[int]:
    """Point i is kept unless some j has x_j <= x_i and y_j at least as good, one strictly."""
    sign = 1 if maximize_y else -1

    def beats(j: int, i: int) -> bool:
        (xj, yj), (xi, yi) = points[j], points[i]
        return xj <= xi and sign * yj >= sign * yi and (xj < xi or sign * yj > sign * yi)

    return [i for i in range(len(points)) if not any(beats(j, i) for j in range(len(points)))]


def test_pareto_front_matches_a_brute_force_computation():
    assert plots.pareto_front([(2, 0.6), (4, 0.75), (8, 0.85), (8, 0.7), (16, 0.8)]) == [0, 1, 2]
    assert plots.pareto_front([(2, 0.4), (4, 0.27), (8, 0.16), (8, 0.3)], maximize_y=False) == [0, 1, 2]
    assert plots.pareto_front([]) == []
    rng = np.random.default_rng(0)
    for n, maximize in itertools.product([1, 2, 5, 30], [True, False]):
        for _ in range(50):
            # Small integer grids make ties in x, in y and whole repeated points common.
            points = [(float(x), float(y)) for x, y in rng.integers(0, 6, size=(n, 2))]
            assert plots.pareto_front(points, maximize_y=maximize) == brute_force_front(points, maximize)


def run_result(tmp_path: pathlib.Path, l0: float, fve: float, mse: float, **cfg) -> RunResult:
    config = TrainConfig(shards=tmp_path / "store", out=tmp_path / "runs", **cfg)
    ev = EvalResult(n_tokens=100, mse=mse, fve=fve, l0=l0, n_dead=0, n_dense=0, freq=[], mean_act=[])
    return RunResult(config, ev)


def test_the_frontier_labels_runs_by_the_settings_the_table_shows(tmp_path):
    results = [
        run_result(tmp_path, 16.0, 0.80, 0.2, arch="topk", k=16),
        run_result(tmp_path, 32.0, 0.90, 0.1, arch="topk", k=32),
        run_result(tmp_path, 40.0, 0.85, 0.15, arch="relu", sparsity_coeff=1e-3),
        run_result(tmp_path, 8.0, math.nan, 0.3, arch="relu", sparsity_coeff=1e-2),  # FVE undefined
    ]
    varying = plots.varying_settings([r.config for r in results])
    header = results_table(results).splitlines()[0]
    assert header == "| " + " | ".join(["run", *varying, "MSE", "FVE", "L0", "dead", "dense"]) + " |"
    assert [plots.run_label(r.config, varying) for r in results[:3]] == [
        "topk k=16",  # in the table's column order, each run's own options only
        "topk k=32",
        "relu sparsity_coeff=0.001",
    ]
    out = tmp_path / "runs"
    assert plots.write_sweep_plot(results, out) == out / plots.SWEEP
    pixels(out / plots.SWEEP)


def test_no_frontier_for_a_single_run_or_without_held_out_metrics(tmp_path):
    out = tmp_path / "runs"
    assert plots.write_sweep_plot([run_result(tmp_path, 16.0, 0.8, 0.2, k=16)], out) is None
    unevaluated = [RunResult(TrainConfig(shards=tmp_path, out=out, k=k), None) for k in (8, 16)]
    assert plots.write_sweep_plot(unevaluated, out) is None
    assert not (out / plots.SWEEP).exists()


ADAPTED_GREEN = (44, 160, 44)
"""matplotlib's tab:green, the adapted coefficient's line."""


@pytest.mark.parametrize("arch", ["relu", "topk"])
def test_a_run_with_a_target_draws_it_and_its_adapted_coefficient(tmp_path, arch):
    """The L0 panel of a run with --target-l0 shows the target (dotted, in its title too) and, where
    the coefficient adapted (relu; not topk, whose k is the target), the coefficient on a second axis."""
    run_dir = tmp_path / "run"
    coeff = {"relu": lambda s: 0.05 * 0.9**s, "topk": lambda s: 0.0}[arch]
    write_metrics(run_dir, [metric_row(s, l0=12.0 - s, sparsity_coeff=coeff(s)) for s in range(1, 9)])
    (run_dir / "config.json").write_text(
        json.dumps({"run_id": "r", "config": {"arch": arch, "target_l0": 5}})
    )
    rgb = pixels(plots.write_run_plots(run_dir))
    l0_panel = quadrants(rgb)[1]
    assert (colour_count(l0_panel, ADAPTED_GREEN) > 200) == (arch == "relu")
    assert colour_count(quadrants(rgb)[0], ADAPTED_GREEN) == 0
    # The dashed target line: one more dark row across the panel than without a target (the frame's
    # top and bottom are the others).
    (run_dir / "config.json").write_text(json.dumps({"run_id": "r", "config": {"arch": arch}}))
    untargeted = quadrants(pixels(plots.write_run_plots(run_dir)))[1]

    def dark_rows(panel):
        return int(((panel[60:, 60:-120] < 60).all(-1).sum(1) > 200).sum())

    assert dark_rows(l0_panel) > dark_rows(untargeted)
