"""Column names and types of every result table: the contract with the warehouse.

Each fit table is built through :func:`frame`, so a missing, extra or misspelt
column fails here rather than in a warehouse write. The warehouse adds
``run_id``, ``experiment_id`` and ``metric_id`` in front.
"""
from __future__ import annotations

import polars as pl

F, I, S, B = pl.Float64, pl.Int64, pl.String, pl.Boolean

SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "posterior_summary": {
        "parameter": S, "variant": S, "mean": F, "sd": F, "median": F, "ci_low": F, "ci_high": F,
        "mcse_mean": F, "ess_bulk": F, "ess_tail": F, "r_hat": F,
    },
    "lift": {
        "variant": S, "control_variant": S, "n_users": I, "n_users_control": I,
        "observed_mean": F, "observed_mean_control": F,
        "expected_count_mean": F, "expected_count_low": F, "expected_count_high": F,
        "expected_count_control_mean": F, "expected_count_control_low": F, "expected_count_control_high": F,
        "relative_lift_mean": F, "relative_lift_median": F, "relative_lift_low": F, "relative_lift_high": F,
        "absolute_lift_mean": F, "absolute_lift_low": F, "absolute_lift_high": F,
        "prob_beat_control": F, "expected_loss_ship": F, "expected_loss_keep": F, "prob_in_rope": F,
        "decision": S, "decision_reason": S,
    },
    "diagnostics": {
        "method": S, "prior_preset": S, "num_chains": I, "num_warmup": I, "num_samples": I,
        "target_accept": F, "seed": I, "n_users": I, "n_cells": I, "divergences": I, "max_r_hat": F,
        "min_ess_bulk": F, "min_ess_tail": F, "min_bfmi": F, "srm_p_value": F, "ppc_p_value": F,
        "converged": B, "failure_reasons": S, "sampling_seconds": F, "total_seconds": F,
    },
    "predictive_check": {
        "variant": S, "count_low": I, "count_high": I, "observed_users": I, "observed_share": F,
        "predicted_share_mean": F, "predicted_share_low": F, "predicted_share_high": F, "ppc_p_value": F,
    },
    "user_estimates": {
        "variant": S, "cv_count": I, "exposure": F, "n_users": I,
        "rate_mean": F, "rate_median": F, "rate_low": F, "rate_high": F,
    },
}


def frame(table: str, rows: list[dict]) -> pl.DataFrame:
    """Build one result table with its declared columns, in order, and types."""
    schema = SCHEMAS[table]
    for row in rows:
        if set(row) != set(schema):
            raise KeyError(f"{table}: row columns {sorted(set(row) ^ set(schema))} differ from the schema")
    return pl.DataFrame(rows, schema=schema) if rows else pl.DataFrame(schema=schema)
