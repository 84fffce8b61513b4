"""Reusing a pair's last results when nothing it was computed from has changed.

A fit is a pure function of its inputs: the pair's histogram (and its segment
breakdowns' histograms), its control, planned split, metric type and tolerance,
the run options that set its :class:`glmm_model.FitConfig` but the time limit (the pair's seed is
derived from the base seed and its ids, so it does not change from night to
night), and the engine that computes it (glmm-ab's statistics code and the
libraries it runs on). Fitting the same inputs again gives the same draws and the
same tables, only slower: an ended experiment, or a night with no new rows, would
spend its whole fit stage reproducing yesterday's answer.

:func:`pair_digest` names those inputs with one digest, recorded per pair in
``glmm.fit_inputs``. A run asks the warehouse for the pairs whose newest recorded
digest is tonight's (:meth:`flows.warehouse.Warehouse.earlier_fits`) and writes
their rows again under its own run id, with ``fitted_in_run_id`` saying which run
sampled them; the rest are fitted. ``glmm-ab run --refit-all`` fits every pair.
"""
from __future__ import annotations

import hashlib
from dataclasses import replace
from functools import lru_cache

import polars as pl

from .options import RunOptions
from .warehouse import FIT_INPUTS_COLUMNS, PairHistogram

# the libraries whose arithmetic the results depend on (sampling, diagnostics, tables)
ENGINE_PACKAGES = ("jax", "jaxlib", "numpyro", "numpy", "scipy", "arviz", "polars")
FIT_INPUTS_SCHEMA = {column: pl.String for column in FIT_INPUTS_COLUMNS}


@lru_cache(maxsize=1)
def engine_digest() -> str:
    """A digest of the statistics engine: every source file of ``glmm_model`` and the versions of the
    libraries in :data:`ENGINE_PACKAGES`. Any change to either makes every pair's digest new."""
    from glmm_model.programs import engine_modules, source_digest

    return source_digest(engine_modules(), ENGINE_PACKAGES)


def _frame_bytes(frame: pl.DataFrame) -> bytes:
    """A histogram's rows in a canonical form: its schema, then its rows sorted, as CSV."""
    return (str(frame.schema) + "\n" + frame.sort(frame.columns).write_csv()).encode()


def pair_digest(pair: PairHistogram, options: RunOptions) -> str:
    """The digest of everything a pair's results are computed from (see the module's docstring)."""
    config = options.fit_config(pair.experiment_id, pair.metric_id, pair.planned_split, pair.metric_type,
                                pair.tolerated_drop)
    # the time limit decides whether a fit finishes, not what a finished one computes
    config = replace(config, sampler=replace(config.sampler, time_limit_s=None))
    digest = hashlib.sha256(engine_digest().encode())
    for part in (pair.experiment_id, pair.metric_id, pair.control_variant, repr(config), repr(options.segments)):
        digest.update(part.encode() + b"\0")
    digest.update(_frame_bytes(pair.histogram))
    for dimension, histogram in pair.segments if options.segments else ():
        digest.update(dimension.encode() + b"\0" + _frame_bytes(histogram))
    return digest.hexdigest()


def fit_inputs(keys: list[tuple[str, str]], digests: dict[tuple[str, str], str], run_id: str) -> pl.DataFrame:
    """``glmm.fit_inputs`` rows of pairs fitted in run ``run_id``."""
    rows = [(e, m, digests[(e, m)], run_id) for e, m in keys]
    return pl.DataFrame(rows, schema=FIT_INPUTS_SCHEMA, orient="row")


def merge_results(fitted: dict[str, pl.DataFrame], reused: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    """One frame per result table: the pairs fitted tonight and those reused, ordered by pair (each pair's
    rows in their own order)."""
    if not reused:
        return fitted
    out = {}
    for name in dict.fromkeys([*fitted, *reused]):
        parts = [frame for frame in (fitted.get(name), reused.get(name)) if frame is not None and frame.height]
        if not parts:
            out[name] = fitted.get(name, reused.get(name))
            continue
        joined = pl.concat(parts, how="vertical_relaxed") if len(parts) > 1 else parts[0]
        out[name] = joined.with_row_index("_row").sort("experiment_id", "metric_id", "_row").drop("_row")
    return out
