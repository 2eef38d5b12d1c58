"""Terminal output: tables that fit the terminal without cutting a name, progress lines in a log,
warnings and errors on lines of their own, and the metric directions tables and plots share."""

from __future__ import annotations

import io
import sys
import warnings

import pytest

from nega.console import install_message_hooks, print_table, wrap_cell
from nega.eval.report import print_results
from nega.progress import progress_bar

METRICS = ["harmful_rate", "degenerate_rate", "refusal_rate", "xstest_safe_compliance", "over_refusal_rate"]
ARMS = ["start", "d2o", "d2o_online"]


def results_table() -> dict[str, dict[str, float]]:
    return {arm: {m: 0.1 * i + 0.01 * j for j, m in enumerate(METRICS)} for i, arm in enumerate(ARMS)}


def lines_of(text: str) -> list[str]:
    return text.rstrip("\n").splitlines()


def test_results_table_at_80_columns_prints_every_name_in_full(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    print_results("toy-d2o (d2o; toy, 400 prompts)", results_table())
    out = capsys.readouterr().out
    for name in [*METRICS, *ARMS]:
        assert name in out, out
    assert "…" not in out
    assert max(len(line) for line in lines_of(out)) <= 80, out
    # Too wide across even with wrapped headings, so the metrics became the rows, with their direction.
    assert any(line.startswith("│ xstest_safe_compliance ↑ ") for line in lines_of(out)), out
    assert any(line.startswith("│ harmful_rate ↓ ") for line in lines_of(out)), out


def test_a_wide_terminal_shows_the_table_as_it_is(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "200")
    print_results("toy-d2o", results_table())
    out = capsys.readouterr().out
    heading = next(line for line in lines_of(out) if "harmful_rate" in line)
    assert all(m in heading for m in METRICS), out  # one line of headings: metrics across
    assert any(line.startswith("│ d2o_online ") for line in lines_of(out)), out


def test_headings_wrap_at_name_boundaries_and_are_never_cut():
    """A table that does not fit across wraps its headings after `_`: every piece of every name is
    there, no line is wider than the terminal."""
    stream = io.StringIO()
    header = ["", *METRICS]
    rows = [[arm, *("0.123" for _ in METRICS)] for arm in ARMS]
    print_table("t", header, rows, right=range(1, 6), stream=stream, width=96)
    out = stream.getvalue()
    assert max(len(line) for line in lines_of(out)) <= 96, out
    assert "…" not in out
    assert "xstest_" in out and "compliance" in out and "xstest_safe_compliance" not in out, out
    assert all(f"│ {arm} " in out for arm in ARMS), out


def test_a_table_that_cannot_fit_folds_but_keeps_every_character():
    stream = io.StringIO()
    print_table("t", ["name", "path"], [["a", "/" + "x" * 70]], stream=stream, width=30)
    out = stream.getvalue()
    assert max(len(line) for line in lines_of(out)) <= 30, out
    cells = "".join(
        line.split("│")[2].strip() for line in lines_of(out) if line.startswith("│ a ") or "│   " in line
    )
    assert cells.count("x") == 70, out


@pytest.mark.parametrize("width", [3, 8, 15, 40])
def test_wrap_cell_keeps_the_text_and_the_width(width):
    text = "D²O on HH-RLHF harmless-base negatives; /home/user/models/Qwen2.5-0.5B-Instruct"
    lines = wrap_cell(text, width)
    assert all(len(line) <= width for line in lines)
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")


def test_recipes_and_models_fit_an_80_column_terminal(monkeypatch):
    from typer.testing import CliRunner

    from nega.cli import app
    from nega.config import builtin_recipes

    runner = CliRunner()
    recipes = runner.invoke(app, ["recipes"], env={"COLUMNS": "80"})
    assert recipes.exit_code == 0, recipes.output
    assert max(len(line) for line in lines_of(recipes.stdout)) <= 80, recipes.stdout
    for name in builtin_recipes():
        assert f"│ {name} " in recipes.stdout
    models = runner.invoke(app, ["models"], env={"COLUMNS": "80"})
    assert models.exit_code == 0, models.output
    assert max(len(line) for line in lines_of(models.stdout)) <= 80, models.stdout
    assert "smollm2-135m-instruct" in models.stdout


# ---------------------------------------------------------------------------------------------------
# Progress in a log


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def loud(monkeypatch):
    monkeypatch.delenv("NEGA_QUIET", raising=False)  # the test suite runs quiet


def test_progress_in_a_log_reports_every_tenth_with_rate_and_time_left():
    stream, clock = io.StringIO(), Clock()
    with progress_bar(
        "reference log-probs (d2o_online-r2-reflogps)", total=1000, stream=stream, clock=clock
    ) as advance:
        for _ in range(100):
            clock.now += 0.5  # 20 rows a second
            advance(10)
    lines = lines_of(stream.getvalue())
    assert lines[0] == "[nega] reference log-probs (d2o_online-r2-reflogps) ..."
    assert len(lines) == 11, lines  # start, 10%..90%, end
    assert lines[1] == "[nega] reference log-probs (d2o_online-r2-reflogps): 100/1000 (10%), 20/s, 45s left"
    assert lines[5].endswith("500/1000 (50%), 20/s, 25s left")
    assert lines[-1] == "[nega] reference log-probs (d2o_online-r2-reflogps): 1000/1000 done in 50s, 20/s"


def test_a_slow_loop_reports_at_least_every_30_seconds():
    stream, clock = io.StringIO(), Clock()
    with progress_bar("rollouts (wave 1)", total=10_000, stream=stream, clock=clock) as advance:
        for _ in range(12):
            clock.now += 10.0  # far from the next tenth: only the clock brings a line
            advance(1, loss=0.25)
    lines = lines_of(stream.getvalue())
    middle = lines[1:-1]
    assert [line.split(": ", 1)[1].split(",")[0] for line in middle] == [
        "3/10000 (0%)",
        "6/10000 (0%)",
        "9/10000 (0%)",
        "12/10000 (0%)",
    ]
    assert "0.1/s" in middle[0] and "left" in middle[0] and "loss=0.25" in middle[0]


def test_a_short_loop_prints_its_start_and_end_only():
    stream, clock = io.StringIO(), Clock()
    with progress_bar("eval start", total=10, stream=stream, clock=clock) as advance:
        for _ in range(10):
            clock.now += 0.01
            advance()
    assert len(lines_of(stream.getvalue())) == 2


def test_quiet_prints_nothing(monkeypatch):
    monkeypatch.setenv("NEGA_QUIET", "1")
    stream = io.StringIO()
    with progress_bar("x", total=3, stream=stream) as advance:
        advance(3)
    assert stream.getvalue() == ""


# ---------------------------------------------------------------------------------------------------
# Messages start a line of their own


def screen(text: str) -> list[str]:
    """What a terminal shows for `text`: `\\r` returns to the start of the line, later characters
    overwrite earlier ones, `\\n` starts the next line."""
    lines, line, col = [], [], 0
    for ch in text:
        if ch == "\n":
            lines.append("".join(line).rstrip())
            line, col = [], 0
        elif ch == "\r":
            col = 0
        else:
            if col < len(line):
                line[col] = ch
            else:
                line.append(ch)
            col += 1
    lines.append("".join(line).rstrip())
    return lines


@pytest.fixture
def terminal(monkeypatch):
    """Call it to make stderr a buffer (in the test's body: pytest sets its own stderr again between a
    fixture and the test); the warning and exception hooks are restored afterwards."""

    # Python's own way of showing a warning; pytest records warnings instead, which would hide them.
    def python_showwarning(message, category, filename, lineno, file=None, line=None):
        (file or sys.stderr).write(warnings.formatwarning(message, category, filename, lineno, line))

    monkeypatch.setattr(warnings, "showwarning", python_showwarning)
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)

    def use() -> io.StringIO:
        stream = io.StringIO()
        monkeypatch.setattr(sys, "stderr", stream)
        return stream

    return use


def test_a_warning_during_a_bar_starts_on_a_new_line(terminal):
    from tqdm import tqdm

    stream = terminal()
    install_message_hooks()
    bar = tqdm(total=10, file=sys.stderr, desc="training", mininterval=0)
    bar.update(3)
    warnings.showwarning("train.bf16 is ignored", UserWarning, "x.py", 1)
    bar.close()
    shown = screen(stream.getvalue())
    line = next(s for s in shown if "UserWarning: train.bf16 is ignored" in s)
    assert "training" not in line and "%|" not in line, shown
    assert any(s.startswith("training:") and "3/10" in s for s in shown), shown  # the bar came back


def test_a_warning_without_the_hook_lands_on_the_bar_line(terminal):
    """The failure the hook prevents, seen by the same `screen`."""
    from tqdm import tqdm

    stream = terminal()
    bar = tqdm(total=10, file=sys.stderr, desc="training", mininterval=0)
    bar.update(3)
    warnings.showwarning("train.bf16 is ignored", UserWarning, "x.py", 1)
    shown = screen(stream.getvalue())
    assert any("training" in s and "UserWarning" in s for s in shown), shown
    bar.close()


def test_an_error_during_a_bar_starts_on_a_new_line(terminal):
    import typer
    from tqdm import tqdm

    stream = terminal()
    from nega.cli import fail

    bar = tqdm(total=50, file=sys.stderr, desc="d2o-train", mininterval=0)
    bar.update(37)
    with pytest.raises(typer.Exit):
        fail("training stopped at step 38: loss is nan", code=1)
    shown = screen(stream.getvalue())
    assert "training stopped at step 38: loss is nan" in shown, shown
    assert any(s.startswith("d2o-train:") and "37/50" in s for s in shown), shown  # the bar's last state


def test_an_uncaught_error_ends_the_bar_line_first(terminal):
    from tqdm import tqdm

    stream = terminal()
    install_message_hooks()
    bar = tqdm(total=5, file=sys.stderr, desc="sampling", mininterval=0)
    bar.update(2)
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    shown = screen(stream.getvalue())
    assert "Traceback (most recent call last):" in shown and "RuntimeError: boom" in shown, shown
    assert any(s.startswith("sampling:") and "2/5" in s for s in shown), shown
