"""What the dashboard reads, as named queries against the published BI copy.

Every query opens its own read-only connection and closes it: the nightly job
replaces the published file by renaming a new one over it, and the next query
simply opens the new file. Nothing here can take a write lock, and every value
from the user (experiment, metric, run) is a bound parameter.
"""
from __future__ import annotations

import os
from pathlib import Path

import duckdb
import polars as pl

CANDIDATES = ("warehouse/glmm_ab_bi.duckdb", "warehouse/demo_bi.duckdb")


class DashboardDataError(RuntimeError):
    """The published file is missing or is not a glmm-ab publication."""


def default_published_path() -> Path:
    """$GLMM_AB_BI_PATH, else the BI copy beside $GLMM_AB_WAREHOUSE, else the first that exists of
    the nightly job's and the demo's default copies."""
    if os.environ.get("GLMM_AB_BI_PATH"):
        return Path(os.environ["GLMM_AB_BI_PATH"])
    if os.environ.get("GLMM_AB_WAREHOUSE"):
        warehouse = Path(os.environ["GLMM_AB_WAREHOUSE"])
        return warehouse.with_name(f"{warehouse.stem}_bi.duckdb")
    return next((Path(p) for p in CANDIDATES if Path(p).exists()), Path(CANDIDATES[0]))


def query(path: str | Path, sql: str, params: list | None = None) -> pl.DataFrame:
    """One read-only connection per query, closed before returning."""
    path = Path(path)
    if not path.is_file():
        raise DashboardDataError(f"no published results at {path}: run 'glmm-ab demo' or 'glmm-ab run' first")
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        raise DashboardDataError(f"cannot open the published results {path}: {exc}") from exc
    try:
        return pl.from_arrow(con.execute(sql, params or []).to_arrow_table())
    except duckdb.CatalogException as exc:
        raise DashboardDataError(f"{path} is not a glmm-ab publication: {exc}") from exc
    finally:
        con.close()


def publication(path) -> dict:
    return query(path, "SELECT run_id, published_at FROM main.bi_publication").row(0, named=True)


def pairs(path) -> pl.DataFrame:
    """Experiment x metric pairs with results, and the experiment's control."""
    return query(path, """
        SELECT DISTINCT experiment_id, metric_id, control_variant
        FROM main.rpt_experiment_results_latest ORDER BY experiment_id, metric_id
    """)


def overview(path) -> pl.DataFrame | None:
    """Every experiment x treatment with its experiment-level decision (rpt_experiment_decisions), the
    worst health of its metrics, newest experiment first; None for a copy published before the model."""
    present = query(path, "SELECT count(*) AS n FROM information_schema.tables "
                          "WHERE table_schema = 'main' AND table_name = 'rpt_experiment_decisions'")["n"][0]
    if not present:
        return None
    return query(path, """
        WITH health AS (
            SELECT experiment_id,
                   CASE WHEN bool_or(health_status = 'failed') THEN 'failed'
                        WHEN bool_or(health_status = 'warning') THEN 'warning' ELSE 'ok' END AS health
            FROM main.rpt_experiment_health GROUP BY experiment_id
        )
        SELECT d.experiment_id, d.variant, d.control_variant, d.decision, d.decision_reason, d.primary_metric_id,
               d.primary_relative_lift_mean, d.primary_relative_lift_low, d.primary_relative_lift_high,
               d.primary_prob_beat_control, d.guardrail_status, d.guardrails_failing, h.health, d.days_running,
               d.experiment_start_at
        FROM main.rpt_experiment_decisions AS d LEFT JOIN health AS h USING (experiment_id)
        ORDER BY d.experiment_start_at DESC, d.experiment_id, d.variant
    """)


def latest(path, experiment_id: str, metric_id: str) -> pl.DataFrame:
    return query(path, """
        SELECT * FROM main.rpt_experiment_results_latest
        WHERE experiment_id = ? AND metric_id = ? ORDER BY variant
    """, [experiment_id, metric_id])


def segments(path, experiment_id: str, metric_id: str) -> pl.DataFrame | None:
    """The latest segment breakdowns of the pair (rpt_segment_lift_latest); None for a copy published
    before the model."""
    present = query(path, "SELECT count(*) AS n FROM information_schema.tables "
                          "WHERE table_schema = 'main' AND table_name = 'rpt_segment_lift_latest'")["n"][0]
    if not present:
        return None
    return query(path, """
        SELECT dimension, variant, segment, n_users, n_users_control, relative_lift_mean, relative_lift_low,
               relative_lift_high, prob_beat_control, srm_p_value, srm_mismatch, overall_relative_lift_mean,
               effect_spread_median, effect_spread_low, effect_spread_high, valid
        FROM main.rpt_segment_lift_latest
        WHERE experiment_id = ? AND metric_id = ? ORDER BY dimension, variant, segment
    """, [experiment_id, metric_id])


def history(path, experiment_id: str, metric_id: str) -> pl.DataFrame:
    return query(path, """
        SELECT as_of, run_id, variant, relative_lift_mean, relative_lift_low, relative_lift_high,
               prob_beat_control, decision
        FROM main.rpt_lift_history
        WHERE experiment_id = ? AND metric_id = ? ORDER BY as_of, variant
    """, [experiment_id, metric_id])


def health(path) -> pl.DataFrame:
    return query(path, """
        SELECT experiment_id, metric_id, health_status, health_reasons, srm_p_value,
               n_assignment_conflicts, converged, max_r_hat, min_ess_bulk, divergences,
               ppc_p_value, last_event_at, hours_since_last_event, run_id
        FROM main.rpt_experiment_health ORDER BY experiment_id, metric_id
    """)


def data_issues(path, experiment_id: str) -> pl.DataFrame:
    """dq_data_issues of the experiment and of the event log as a whole (no experiment)."""
    return query(path, """
        SELECT coalesce(experiment_id, '(event log)') AS experiment_id, issue, severity, n_rows, detail
        FROM main.dq_data_issues WHERE experiment_id = ? OR experiment_id IS NULL ORDER BY severity, issue
    """, [experiment_id])


def _picture(path, table: str, run_id: str, experiment_id: str, metric_id: str, order: str) -> pl.DataFrame:
    # table and order are constants of this module, never user input
    return query(path, f"""
        SELECT * EXCLUDE (run_id, experiment_id, metric_id) FROM glmm.{table}
        WHERE run_id = ? AND experiment_id = ? AND metric_id = ? ORDER BY {order}
    """, [run_id, experiment_id, metric_id])


def trace(path, run_id, experiment_id, metric_id) -> pl.DataFrame:
    return _picture(path, "posterior_draws", run_id, experiment_id, metric_id, "parameter, variant, chain, draw")


def user_predictive(path, run_id, experiment_id, metric_id) -> pl.DataFrame:
    return _picture(path, "user_predictive", run_id, experiment_id, metric_id, "sample_user, count_low")


def rate_density(path, run_id, experiment_id, metric_id) -> pl.DataFrame:
    return _picture(path, "rate_density", run_id, experiment_id, metric_id, "variant, rate_low")


def predictive_check(path, run_id, experiment_id, metric_id) -> pl.DataFrame:
    return _picture(path, "predictive_check", run_id, experiment_id, metric_id, "variant, count_low")
