"""Input validation: every bad input is refused with a message naming the problem."""
import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from glmm_model import InputError, prepare


def frame(**cols):
    base = {"variant": ["A", "A", "B", "B"], "cv_count": [0, 2, 1, 3]}
    base.update(cols)
    return pl.DataFrame(base, strict=False)


@pytest.mark.parametrize(
    "data, control, message",
    [
        (pl.DataFrame({"variant": [], "cv_count": []}, schema={"variant": pl.String, "cv_count": pl.Int64}), "A", "input is empty"),
        (pl.DataFrame({"variant": ["A", "A"], "cv_count": [1, 2]}), "A", "only one arm"),
        (frame(), "C", "control variant 'C' is not in column 'variant'"),
        (frame(cv_count=[0, -1, 1, 3]), "A", "'cv_count' must be a non-negative count; row 1 has -1"),
        (frame(cv_count=[0, 1.5, 1, 3]), "A", "'cv_count' must hold whole numbers; row 1 has 1.5"),
        (frame(cv_count=[0, None, 1, 3]), "A", "column 'cv_count' has 1 NULL/NaN"),
        (frame(cv_count=[0.0, float("nan"), 1.0, 3.0]), "A", "column 'cv_count' has 1 NULL/NaN"),
        (frame(variant=["A", None, "B", "B"]), "A", "column 'variant' has 1 NULL/NaN"),
        (frame(exposure=[1.0, 0.0, 2.0, 1.0]), "A", "'exposure' must be > 0 and finite; row 1 has 0.0"),
        (frame(exposure=[1.0, -2.0, 2.0, 1.0]), "A", "'exposure' must be > 0 and finite; row 1 has -2.0"),
        (frame(exposure=[1.0, None, 2.0, 1.0]), "A", "column 'exposure' has 1 NULL/NaN"),
        (frame(cv_count=["1", "2", "3", "4"]), "A", "'cv_count' must be numeric"),
        (frame(user_id=["u1", "u2", "u2", "u3"]), "A", "'user_id' must be unique; 'u2'"),
        (pl.DataFrame({"variant": ["A", "B"]}), "A", "required column 'cv_count' is missing"),
        (frame(n_users=[1, 1, 0, 0]), "A", "variant(s) 'B' have no users"),
        (frame(cv_count=[0, 0, 0, 0]), "A", "'cv_count' is 0 for every user: no conversions in any variant"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(data, control, message):
    with pytest.raises(InputError) as err:
        prepare(data, control)
    assert message in str(err.value)


def test_cells_count_users_once_per_arm_count_exposure():
    df = pl.DataFrame(
        {
            "variant": ["B", "A", "A", "B", "A", "B"],
            "cv_count": [1, 0, 0, 1, 5, 2],
            "exposure": [1.0, 1.0, 1.0, 2.0, 1.0, 1.0],
        }
    )
    d = prepare(df, "A")
    assert d.variants == ("A", "B")
    cells = list(zip(d.cell_arm.tolist(), d.cell_count.tolist(), d.cell_exposure.tolist(), d.cell_users.tolist()))
    assert cells == [(0, 0, 1.0, 2), (0, 5, 1.0, 1), (1, 1, 1.0, 1), (1, 1, 2.0, 1), (1, 2, 1.0, 1)]
    # every user maps back to a cell with their own values, in input order
    arm, count, exposure = d.per_user()
    assert count.tolist() == [1, 0, 0, 1, 5, 2]
    assert exposure.tolist() == [1.0, 1.0, 1.0, 2.0, 1.0, 1.0]
    assert [d.variants[a] for a in arm] == df["variant"].to_list()


def test_histogram_input_equals_per_user_input():
    users = pl.DataFrame({"variant": ["A"] * 3 + ["B"] * 3, "cv_count": [0, 0, 4, 1, 1, 1]})
    hist = pl.DataFrame({"variant": ["A", "A", "B"], "cv_count": [0, 4, 1], "n_users": [2, 1, 3]})
    a, b = prepare(users, "A"), prepare(hist, "A")
    for field in ("cell_arm", "cell_count", "cell_exposure", "cell_users"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert b.user_cell is None


def test_arrow_table_and_control_ordering():
    table = pa.table({"variant": ["z", "ctl", "m"], "cv_count": [1, 2, 3]})
    assert prepare(table, "ctl").variants == ("ctl", "m", "z")
