"""QCRD's step schedule: periods, the rows of each step, the lagged checkpoint, refits, the lag warning."""

from __future__ import annotations

import warnings

import pytest

from nega.distill.qcrd.schedule import PeriodSchedule, lag_warning, period_steps


def schedule(**kw):
    values = dict(n_examples=10, per_step=4, steps_per_epoch=3, epochs=2, period=2, lag=1, seed=0)
    return PeriodSchedule(**{**values, **kw})


def test_periods_cut_the_run_and_rows_cover_every_input_each_epoch():
    s = schedule()
    assert s.total_steps == 6 and s.periods == 3
    assert [list(s.steps(p)) for p in range(3)] == [[0, 1], [2, 3], [4, 5]]
    rows = [r for p in range(s.periods) for r in s.rows(p)]
    assert len(rows) == 6 * 4  # every step full
    for epoch in range(2):
        seen = rows[epoch * 12 : (epoch + 1) * 12]
        assert set(seen) == set(range(10))  # 10 inputs, 12 places: each at least once
    assert rows[:12] != rows[12:]  # each epoch reshuffled
    assert s.rows(1) == schedule().rows(1)  # a pure function of the numbers and the seed
    last = schedule(period=4)
    assert [len(last.steps(p)) for p in range(last.periods)] == [4, 2]


def test_the_lagged_checkpoint_is_lag_periods_back_clipped_to_the_start():
    s = schedule(epochs=4, lag=2)  # 12 steps, 6 periods of 2
    assert [s.source(p) for p in range(s.periods)] == [0, 0, 0, 1, 2, 3]
    assert [s.checkpoint_step(s.source(p)) for p in range(s.periods)] == [0, 0, 0, 2, 4, 6]


def test_the_discriminator_refits_at_the_first_period_of_every_disc_every_th_epoch():
    # periods start at steps 0, 3, 6, 9, 12, 15: in epochs 0, 0, 1, 2, 3, 3
    s = schedule(steps_per_epoch=4, epochs=4, period=3)
    assert [s.refits_discriminator(p, 1) for p in range(s.periods)] == [True, False, True, True, True, False]
    assert [s.refits_discriminator(p, 2) for p in range(s.periods)] == [
        True,
        False,
        False,
        True,
        False,
        False,
    ]


def test_a_null_period_is_an_eighth_of_the_run():
    assert period_steps(None, 80) == 10 and period_steps(None, 3) == 1 and period_steps(7, 80) == 7


def test_lag_warning_when_the_lag_spans_the_run():
    assert lag_warning(1, 10, 100) is None
    assert lag_warning(9, 10, 100) is None
    message = lag_warning(10, 10, 100)
    assert message and "10 × 10" in message and "100" in message and "qcrd.lag" in message
    assert lag_warning(8, None, 80) is not None and lag_warning(7, None, 80) is None


def test_validate_warns_when_lag_times_period_reaches_the_total_steps(recwarn):
    from typer.testing import CliRunner

    from nega.cli import app
    from nega.config import load_recipe

    # toy-qcrd: 2 epochs capped at 5 steps = 10 steps in all.
    base = ["train.epochs=2", "train.max_steps=5", "qcrd.negatives_every_steps=5"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_recipe("toy-qcrd", [*base, "qcrd.lag=1"])
    assert not [w for w in caught if "qcrd.lag" in str(w.message)]
    with pytest.warns(UserWarning, match=r"qcrd\.lag × qcrd\.negatives_every_steps = 2 × 5 .* 10 optimizer"):
        load_recipe("toy-qcrd", [*base, "qcrd.lag=2"])
    # data.limit bounds the steps too: 16 rows at batch 4 = 4 steps an epoch, 8 in all, lag 1 × period 8
    with pytest.warns(UserWarning, match="never a trained one"):
        load_recipe("toy-qcrd", ["train.epochs=2", "data.limit=16", "qcrd.negatives_every_steps=8"])
    with pytest.warns(UserWarning, match="never a trained one"):
        result = CliRunner().invoke(app, ["validate", "toy-qcrd", *base, "qcrd.lag=3"])
    assert result.exit_code == 0, result.output  # a warning, not an error
    with pytest.warns(UserWarning, match="8 periods"):
        load_recipe("toy-qcrd", ["qcrd.lag=8"])
