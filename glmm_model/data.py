"""Input validation and the per-cell histogram the collapsed fit reads.

Input is one row per user (``variant``, ``cv_count``, optional ``exposure``,
optional ``pre_cv_count``, optional ``user_id``) or, with an ``n_users`` column, rows
that already count users per (variant, cv_count[, exposure][, pre_cv_count]) cell, as
the warehouse's ``fct_cv_count_histogram`` does. Either way the data reduce to cells
(arm, count, exposure[, pre-period bin]) with a user count: one vectorised group-by, O(n).

``pre_cv_count`` is the same metric's count in a pre-period before the user's first
exposure; NULL means the user has no history there (a new user). Pre-period counts are
grouped into at most ``max_pre_bins`` bins (:func:`pre_period_bins`), so the number of
cells stays bounded however long the tail; each bin's covariate value is the mean of
log1p(pre count) of its users, centred on the mean over users with history.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import polars as pl


class InputError(ValueError):
    """The input cannot be fitted; the message names the column and the value."""


@dataclass(frozen=True)
class ExperimentData:
    """Validated data of one experiment x metric, reduced to histogram cells.

    ``variants[0]`` is the control; treatments follow in sorted order. Cell arrays
    are parallel: ``cell_arm`` (index into variants), ``cell_count``,
    ``cell_exposure`` and ``cell_users`` (how many users share the cell).
    ``user_cell`` maps each input user to their cell (None for histogram input),
    in input order; ``user_ids`` holds their ids when given.
    """

    variants: tuple[str, ...]
    cell_arm: np.ndarray
    cell_count: np.ndarray
    cell_exposure: np.ndarray
    cell_users: np.ndarray
    has_exposure: bool
    user_cell: np.ndarray | None = None
    user_ids: np.ndarray | None = None
    # the pre-period covariate, per cell (None without one): the centred log1p(pre count) of the
    # cell's bin (0 for users with no history), 1 for users with no history, and the bin's range
    cell_pre: np.ndarray | None = None
    cell_no_history: np.ndarray | None = None
    cell_pre_low: np.ndarray | None = None
    cell_pre_high: np.ndarray | None = None

    @property
    def has_covariate(self) -> bool:
        return self.cell_pre is not None

    @property
    def control(self) -> str:
        return self.variants[0]

    @property
    def num_arms(self) -> int:
        return len(self.variants)

    @property
    def n_cells(self) -> int:
        return int(self.cell_users.shape[0])

    @property
    def n_users(self) -> int:
        return int(self.cell_users.sum())

    def users_per_arm(self) -> np.ndarray:
        return np.bincount(self.cell_arm, weights=self.cell_users, minlength=self.num_arms).astype(np.int64)

    def counts_per_arm(self) -> np.ndarray:
        return np.bincount(self.cell_arm, weights=self.cell_users * self.cell_count, minlength=self.num_arms)

    def exposure_per_arm(self) -> np.ndarray:
        return np.bincount(self.cell_arm, weights=self.cell_users * self.cell_exposure, minlength=self.num_arms)

    def without_covariate(self) -> "ExperimentData":
        """The same users without the pre-period covariate: cells merged on (arm, count, exposure)."""
        if not self.has_covariate:
            return self
        key = np.stack([self.cell_arm.astype(float), self.cell_count.astype(float), self.cell_exposure])
        keys, new_cell = np.unique(key, axis=1, return_inverse=True)
        new_cell = new_cell.ravel()
        users = np.bincount(new_cell, weights=self.cell_users, minlength=keys.shape[1]).astype(np.int64)
        return ExperimentData(
            variants=self.variants, cell_arm=keys[0].astype(np.int32), cell_count=keys[1].astype(np.int64),
            cell_exposure=keys[2], cell_users=users, has_exposure=self.has_exposure,
            user_cell=None if self.user_cell is None else new_cell[self.user_cell], user_ids=self.user_ids,
        )

    def as_conversion(self) -> "ExperimentData":
        """The same users as a conversion metric: count 1 for a user with at least one event, else 0,
        and no exposure (a user converted in their window or did not); cells merged accordingly."""
        if self.has_covariate:
            return self.without_covariate().as_conversion()
        converted = (self.cell_count > 0).astype(np.int64)
        key = self.cell_arm.astype(np.int64) * 2 + converted
        keys, new_cell = np.unique(key, return_inverse=True)
        users = np.bincount(new_cell, weights=self.cell_users, minlength=len(keys)).astype(np.int64)
        return ExperimentData(
            variants=self.variants,
            cell_arm=(keys // 2).astype(np.int32),
            cell_count=(keys % 2).astype(np.int64),
            cell_exposure=np.ones(len(keys)),
            cell_users=users,
            has_exposure=False,
            user_cell=None if self.user_cell is None else new_cell[self.user_cell],
            user_ids=self.user_ids,
        )

    def per_user(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(arm, count, exposure) of every user, expanding cells (the latent path's input)."""
        if self.user_cell is not None:
            idx = self.user_cell
        else:
            idx = np.repeat(np.arange(self.n_cells), self.cell_users)
        return self.cell_arm[idx], self.cell_count[idx], self.cell_exposure[idx]


def _to_polars(data) -> pl.DataFrame:
    if isinstance(data, pl.DataFrame):
        return data
    # pyarrow is looked up, not imported: an Arrow table comes from a process that imported it already,
    # and a fit from a file or a polars frame never needs it (its import is 2% of the article's fit)
    pa = sys.modules.get("pyarrow")
    if pa is not None and isinstance(data, (pa.Table, pa.RecordBatch)):
        return pl.from_arrow(data)
    if isinstance(data, dict):
        return pl.DataFrame(data)
    raise InputError(
        f"input must be a polars DataFrame or an Arrow table, got {type(data).__name__}"
    )


def _require_no_nulls(df: pl.DataFrame, column: str) -> None:
    col = df.get_column(column)
    bad = col.is_null()
    if col.dtype.is_float():
        bad = bad | col.is_nan()
    n_bad = int(bad.sum())
    if n_bad:
        first = int(bad.arg_true()[0])
        raise InputError(f"column '{column}' has {n_bad} NULL/NaN value(s) (first at row {first})")


def _first_bad(df: pl.DataFrame, mask: pl.Series, column: str):
    i = int(mask.arg_true()[0])
    return i, df.get_column(column)[i]


MAX_PRE_BINS = 8


def pre_period_bins(pre: np.ndarray, users: np.ndarray, max_bins: int = MAX_PRE_BINS) -> np.ndarray:
    """Lower edges of the pre-period count bins (the first is 0; the last bin is open-ended).

    Every distinct count is its own bin while there are at most ``max_bins``; beyond that 0
    keeps its own bin (often the largest group) and the positive counts are cut at weighted
    quantiles of log1p(count), so each bin holds a similar share of users.
    """
    values, first = np.unique(pre, return_inverse=True)
    if len(values) <= max_bins:
        return values.astype(np.int64)
    weight = np.bincount(first.ravel(), weights=users, minlength=len(values))
    positive = values > 0
    cdf = np.cumsum(weight[positive]) / weight[positive].sum()
    cuts = np.searchsorted(cdf, np.linspace(0.0, 1.0, max_bins)[:-1], side="right")
    edges = np.unique(np.concatenate([[0], values[positive][np.minimum(cuts, positive.sum() - 1)]]))
    return edges.astype(np.int64)


def _pre_period_column(df: pl.DataFrame) -> pl.Series:
    """``pre_cv_count`` as Float64 with NULL for no history; InputError on a value that is not a count."""
    col = df.get_column("pre_cv_count")
    if not (col.dtype.is_numeric() or col.dtype == pl.Null):
        raise InputError(f"column 'pre_cv_count' must be numeric (NULL for a user with no history), got {col.dtype}")
    col = col.cast(pl.Float64).fill_nan(None)
    bad = ((col < 0) | (col != col.floor()) | col.is_infinite()).fill_null(False)
    if bad.any():
        i, v = _first_bad(df, bad, "pre_cv_count")
        raise InputError(f"column 'pre_cv_count' must be a non-negative whole count or NULL (no history); "
                         f"row {i} has {v}")
    return col


def prepare(data, control: str, covariate: bool = True, max_pre_bins: int = MAX_PRE_BINS) -> ExperimentData:
    """Validate ``data`` and reduce it to cells; raise InputError naming any problem.

    ``covariate``: use a ``pre_cv_count`` column when there is one (False ignores it)."""
    df = _to_polars(data)
    if df.height == 0:
        raise InputError("input is empty: no rows to fit")
    for column in ("variant", "cv_count"):
        if column not in df.columns:
            raise InputError(f"required column '{column}' is missing (columns: {', '.join(df.columns)})")
    has_exposure = "exposure" in df.columns
    is_histogram = "n_users" in df.columns
    if is_histogram and "user_id" in df.columns:
        raise InputError("give either per-user rows (with 'user_id') or histogram rows (with 'n_users'), not both")

    for column in ["variant", "cv_count"] + (["exposure"] if has_exposure else []) + (
        ["n_users"] if is_histogram else []
    ):
        _require_no_nulls(df, column)

    variant = df.get_column("variant").cast(pl.String)
    count = df.get_column("cv_count")
    if not count.dtype.is_numeric():
        raise InputError(f"column 'cv_count' must be numeric, got {count.dtype}")
    count_f = count.cast(pl.Float64)
    bad = (count_f < 0) | ~count_f.is_finite()
    if bad.any():
        i, v = _first_bad(df, bad, "cv_count")
        raise InputError(f"column 'cv_count' must be a non-negative count; row {i} has {v}")
    bad = count_f != count_f.floor()
    if bad.any():
        i, v = _first_bad(df, bad, "cv_count")
        raise InputError(f"column 'cv_count' must hold whole numbers; row {i} has {v}")

    if has_exposure:
        exposure = df.get_column("exposure")
        if not exposure.dtype.is_numeric():
            raise InputError(f"column 'exposure' must be numeric, got {exposure.dtype}")
        exposure = exposure.cast(pl.Float64)
        bad = (exposure <= 0) | ~exposure.is_finite()
        if bad.any():
            i, v = _first_bad(df, bad, "exposure")
            raise InputError(f"column 'exposure' must be > 0 and finite; row {i} has {v}")
    else:
        exposure = pl.Series("exposure", np.ones(df.height))

    if is_histogram:
        users = df.get_column("n_users").cast(pl.Float64)
        bad = (users < 0) | (users != users.floor())
        if bad.any():
            i, v = _first_bad(df, bad, "n_users")
            raise InputError(f"column 'n_users' must be a non-negative whole number; row {i} has {v}")
        users = users.cast(pl.Int64)
    else:
        users = pl.Series("n_users", np.ones(df.height, dtype=np.int64))

    if "user_id" in df.columns:
        _require_no_nulls(df, "user_id")
        dup = df.get_column("user_id").is_duplicated()
        if dup.any():
            i, v = _first_bad(df, dup, "user_id")
            raise InputError(f"column 'user_id' must be unique; {v!r} appears more than once (first at row {i})")

    use_pre = covariate and "pre_cv_count" in df.columns
    pre = _pre_period_column(df) if use_pre else pl.Series("pre_cv_count", np.zeros(df.height))
    frame = pl.DataFrame(
        {"variant": variant, "cv_count": count_f.cast(pl.Int64), "exposure": exposure, "n_users": users,
         "pre_cv_count": pre}
    )
    present = frame.group_by("variant").agg(pl.col("n_users").sum())
    present = dict(zip(present["variant"].to_list(), present["n_users"].to_list()))
    if control not in present:
        raise InputError(
            f"control variant {control!r} is not in column 'variant' (found: {', '.join(sorted(present))})"
        )
    if len(present) < 2:
        raise InputError(f"only one arm ({control!r}) in column 'variant': an A/B test needs at least two")
    empty = sorted(v for v, n in present.items() if n == 0)
    if empty:
        raise InputError(f"variant(s) {', '.join(map(repr, empty))} have no users (n_users sums to 0)")
    if not ((frame.get_column("cv_count") * frame.get_column("n_users")) > 0).any():
        raise InputError("column 'cv_count' is 0 for every user: no conversions in any variant, so nothing to compare "
                         "(the posterior would be the prior); check the metric's event name and the window")

    variants = (control,) + tuple(sorted(v for v in present if v != control))
    arm_of = pl.DataFrame({"variant": list(variants), "arm": np.arange(len(variants), dtype=np.int32)})
    frame = frame.with_row_index("row").join(arm_of, on="variant", how="left").sort("row")

    keys = ["arm", "cv_count", "exposure"]
    covariate_columns = {}
    if use_pre:
        frame, covariate_columns = _bin_pre_period(frame, max_pre_bins)
        keys.append("pre_bin")
    cells = (
        frame.group_by(keys)
        .agg(pl.col("n_users").sum())
        .filter(pl.col("n_users") > 0)
        .sort(keys)
        .with_row_index("cell")
    )
    user_cell = None
    user_ids = None
    if not is_histogram:
        user_cell = (
            frame.join(cells.select(*keys, "cell"), on=keys, how="left")
            .sort("row")
            .get_column("cell")
            .to_numpy()
            .astype(np.int64)
        )
        if "user_id" in df.columns:
            user_ids = df.get_column("user_id").cast(pl.String).to_numpy()

    return ExperimentData(
        variants=variants,
        cell_arm=cells["arm"].to_numpy().astype(np.int32),
        cell_count=cells["cv_count"].to_numpy().astype(np.int64),
        cell_exposure=cells["exposure"].to_numpy().astype(np.float64),
        cell_users=cells["n_users"].to_numpy().astype(np.int64),
        has_exposure=has_exposure,
        user_cell=user_cell,
        user_ids=user_ids,
        **{name: by_bin[cells["pre_bin"].to_numpy()] for name, by_bin in covariate_columns.items()},
    )


def _bin_pre_period(frame: pl.DataFrame, max_bins: int):
    """``frame`` with a ``pre_bin`` column (-1: no history), and per bin (index -1, the last slot: no
    history) the covariate's arrays: the centred mean log1p(pre count), the no-history flag and the range."""
    pre = frame.get_column("pre_cv_count").to_numpy()
    users = frame.get_column("n_users").to_numpy().astype(float)
    history = ~np.isnan(pre)
    if not (users[history] > 0).any():
        raise InputError("column 'pre_cv_count' is NULL (no history) for every user: there is no pre-period to "
                         "adjust for; drop the column or fit without the covariate")
    edges = pre_period_bins(pre[history].astype(np.int64), users[history], max_bins)
    bin_of = np.full(len(pre), -1, np.int64)
    bin_of[history] = np.searchsorted(edges, pre[history], side="right") - 1
    log1p = np.log1p(np.where(history, pre, 0.0))
    w = np.where(history, users, 0.0)
    centre = float((w * log1p).sum() / w.sum())
    n_bins = len(edges)
    bin_users = np.bincount(bin_of[history], weights=w[history], minlength=n_bins)
    bin_value = np.bincount(bin_of[history], weights=(w * log1p)[history], minlength=n_bins) / np.maximum(bin_users, 1e-300)
    high = np.concatenate([edges[1:] - 1, [int(pre[history].max())]])
    # index n_bins (from bin -1) is the no-history slot
    value = np.concatenate([bin_value - centre, [0.0]])
    flag = np.concatenate([np.zeros(n_bins, np.int64), [1]])
    low_of = np.concatenate([edges, [-1]])
    high_of = np.concatenate([high, [-1]])
    columns = {"cell_pre": value, "cell_no_history": flag, "cell_pre_low": low_of, "cell_pre_high": high_of}
    return frame.with_columns(pl.Series("pre_bin", bin_of)), columns
