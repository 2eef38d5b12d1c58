"""Training curves with enough points (and learning-rate and gradient-norm panels), comparison plots
readable at 1200 px, and one table of metric directions that covers what the evaluations report."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch

from nega.config import TrainConfig, load_recipe
from nega.eval.report import (
    METRIC_DIRECTIONS,
    comparison_plot,
    curve_series,
    is_score,
    metric_direction,
    metric_heading,
    metric_key,
    rate,
    training_curve,
)
from nega.training import logging_interval, training_arguments


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG header."""
    return struct.unpack(">II", path.read_bytes()[16:24])


@pytest.mark.parametrize(
    ("logging_steps", "max_steps", "expected"),
    [
        (10, 20, 1),  # a short run logs every step
        (10, 50, 2),  # 25 points
        (10, 40, 2),
        (10, 1000, 10),  # the recipe's interval already gives 100 points
        (25, 400, 20),  # 16 points would be too few: 20
        (1, 5, 1),
        (10, 0, 10),  # unknown length: the recipe's value
    ],
)
def test_logging_interval_gives_at_least_20_points(logging_steps, max_steps, expected):
    assert logging_interval(logging_steps, max_steps) == expected


class _Rows(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"x": torch.tensor([float(i)])}


def test_a_30_step_run_logs_loss_lr_and_grad_norm_every_step(tmp_path, monkeypatch, capsys):
    """train.logging_steps 10 over 30 steps would draw 3 points; the Trainer logs all 30, and the
    recipe's value (bookkeeping, outside the stage hash) is left as it was."""
    from nega.trainer import MethodTrainer

    class Square(MethodTrainer):
        def loss_and_metrics(self, model, inputs):
            out = model(inputs["x"])
            return out.pow(2).mean(), {"mean_output": out.mean().detach()}

    class Tokenizer:
        def save_pretrained(self, path):
            pass

    cfg = TrainConfig(lr=0.01, batch_size=2, max_steps=30, logging_steps=10, save_steps=100)
    model = torch.nn.Linear(1, 1)
    model.save_pretrained = lambda path, **kwargs: Path(path).mkdir(parents=True, exist_ok=True)
    monkeypatch.delenv("NEGA_QUIET", raising=False)
    args = training_arguments(cfg, tmp_path / "sq-train" / "checkpoints")
    assert args.disable_tqdm  # stderr is not a terminal here: lines, not a bar
    trainer = Square(
        model=model,
        args=args,
        train_dataset=_Rows(),
        data_collator=lambda rows: {"x": torch.stack([r["x"] for r in rows])},
        metric_prefix="square",
    )
    _, history = trainer.fit(Tokenizer(), tmp_path / "model")
    series = curve_series(history)
    assert list(series) == ["loss", "learning_rate", "grad_norm", "square/mean_output"]
    assert series["loss"][0] == list(range(1, 31))
    assert len(series["grad_norm"][0]) == 30 and len(series["square/mean_output"][0]) == 30
    assert args.logging_steps == 10 and cfg.logging_steps == 10
    assert "logging_steps" not in cfg.stage_key()
    log = capsys.readouterr().err.splitlines()
    assert "[nega] training sq-train ..." in log, log
    assert any(line.startswith("[nega] training sq-train: 30/30 done in ") for line in log), log
    path = training_curve(tmp_path / "training_curve.png", history, "square")
    assert 900 <= png_size(path)[0] <= 1300


def test_curve_series_orders_the_panels_and_drops_non_finite_values():
    history = [
        {"step": 1, "loss": 2.0, "grad_norm": 1.0, "learning_rate": 1e-4, "d2o/margin": 0.1, "epoch": 0.1},
        {"step": 2, "loss": float("nan"), "grad_norm": 3.0, "learning_rate": 2e-4, "d2o/margin": 0.2},
        {"train_loss": 1.5, "train_runtime": 3.0},  # the Trainer's summary, no step
    ]
    series = curve_series(history)
    assert list(series) == ["loss", "learning_rate", "grad_norm", "d2o/margin"]
    assert series["loss"] == ([1], [2.0])
    assert series["grad_norm"] == ([1, 2], [1.0, 3.0])


def _harm_arms(n_arms: int) -> dict[str, dict]:
    flags = [[i % k == 0 for i in range(40)] for k in range(2, 8)]
    return {
        f"arm_{j}" if j else "start": {
            "harmful": rate(flags[j % 6]),
            "refusal": rate(flags[(j + 1) % 6]),
            "over-refusal": rate(flags[(j + 2) % 6]),
            "helpful": rate(flags[(j + 3) % 6]),
            "degenerate": rate(flags[(j + 4) % 6]),
            "unparsed": 0,
            "n_harmful": 40.0,
        }
        for j in range(n_arms)
    }


@pytest.mark.parametrize("n_arms", [2, 6])
def test_comparison_plot_is_readable_at_1200_px(tmp_path, n_arms):
    path = comparison_plot(tmp_path / "eval-harm.png", _harm_arms(n_arms), "Harm: advbench (40 prompts)")
    width, height = png_size(path)
    assert 900 <= width <= 1300, (width, height)
    assert height <= 1000, (width, height)


def test_comparison_plot_panels_carry_directions_and_leave_counts_out(tmp_path, monkeypatch):
    """One panel per metric titled with its arrow, the legend outside every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    comparison_plot(tmp_path / "eval.png", _harm_arms(3), "Harm")
    fig = figures[-1]
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["harmful ↓", "refusal ↑", "over-refusal ↓", "helpful ↑", "degenerate ↓", "unparsed ↓"]
    legend = fig.legends[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = legend.get_window_extent(renderer)
    for ax in fig.axes:
        if ax.get_title():
            assert not box.overlaps(ax.get_window_extent(renderer)), ax.get_title()
    assert [t.get_text() for t in legend.get_texts()] == ["start", "arm_1", "arm_2"]
    close(fig)


def test_metric_names_map_to_the_direction_table():
    assert metric_key("harm-xstest/over_refusal_rate") == "over_refusal_rate"
    assert metric_key("reasoning/pass@16") == "pass@k" and metric_key("maj@4") == "maj@k"
    assert metric_key("over-refusal") == "over_refusal"
    assert metric_direction("harm/harmful_rate") == "lower"
    assert metric_direction("reasoning/accuracy") == "higher"
    assert metric_direction("n_harmful") is None and metric_direction("my_scorer/score") is None
    assert metric_heading("harm/harmful_rate") == "harm/harmful_rate ↓"
    assert metric_heading("n") == "n"
    assert set(METRIC_DIRECTIONS.values()) == {"lower", "higher"}


def toy_recipe_metrics() -> dict[str, set[str]]:
    """recipe -> the metric names its evaluation stage reports, from each toy recipe's own eval set
    scoring answers (any text: the names depend on the prompts, not on what was answered)."""
    from nega.align.d2o.run import toy_harm_set
    from nega.distill.qcrd.run import student_set
    from nega.eval.stage import held_out_problems

    sets = {
        "toy-d2o": lambda r: toy_harm_set(r),
        "toy-sft": lambda r: held_out_problems(r),
        "toy-stepneg": lambda r: held_out_problems(r),
        "toy-qcrd": lambda r: student_set(r),
    }
    names = {}
    for recipe_name, make in sets.items():
        prompt_set = make(load_recipe(recipe_name))
        answers = ["well, I can't help with that."] * (len(prompt_set.prompts) * prompt_set.n)
        names[recipe_name] = set(prompt_set.score(answers))
    return names


def test_the_direction_table_covers_every_metric_of_the_toy_recipes():
    for recipe_name, names in toy_recipe_metrics().items():
        assert names, recipe_name
        unknown = {n for n in names if metric_key(n) not in METRIC_DIRECTIONS and is_score(n)}
        assert not unknown, f"{recipe_name}: {sorted(unknown)}"


def test_the_direction_table_covers_the_harm_and_reasoning_evaluations():
    from nega.eval.harm import summary as harm_summary
    from nega.eval.reasoning import summary as reasoning_summary

    entry = rate([True, False])
    harm = {k: entry for k in ("harmful", "refusal", "over_refusal", "helpful", "degenerate")}
    reasoning = {"accuracy": entry, "pass@k": {"1": 0.5, "4": 0.7}, "maj@k": {"4": 0.6}}
    names = [f"harm/{k}" for k in harm_summary({**harm, "unparsed": 1})]
    names += [f"reasoning/{k}" for k in reasoning_summary(reasoning)]
    # the readable tables' columns (nega.eval.stage: HarmEval.section, ReasoningEval.section)
    names += ["harmful", "refusal", "over-refusal", "helpful", "degenerate", "unparsed", "accuracy", "pass@4"]
    assert all(metric_direction(n) is not None for n in names if is_score(n)), [
        n for n in names if metric_direction(n) is None and is_score(n)
    ]


def test_training_progress_in_a_log_names_the_stage_and_counts_from_a_resumed_step(monkeypatch):
    import io
    from types import SimpleNamespace

    from nega.training import log_progress_callback

    monkeypatch.delenv("NEGA_QUIET", raising=False)
    now = [0.0]
    stream = io.StringIO()
    callback = log_progress_callback("training d2o-train", stream=stream, clock=lambda: now[0])
    state = SimpleNamespace(is_world_process_zero=True, max_steps=100, global_step=40)  # resumed at 40
    callback.on_train_begin(None, state, None)
    for step in range(41, 101):
        now[0] += 0.5  # two steps a second
        state.global_step = step
        callback.on_step_end(None, state, None)
        callback.on_log(None, state, None, logs={"loss": 1.0 / step, "learning_rate": 1e-4})
    callback.on_train_end(None, state, None)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[nega] training d2o-train ..."
    # A step's line comes before the Trainer logs that step: the loss shown is the last one logged.
    assert lines[1] == "[nega] training d2o-train: 50/100 (50%), 2/s, 25s left, loss=0.02041", lines
    assert len(lines) == 2 + 5, lines  # 50% .. 90%, then the end line
    assert lines[-1] == "[nega] training d2o-train: 100/100 done in 30s, 2/s, loss=0.01", lines
