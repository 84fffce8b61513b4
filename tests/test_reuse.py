"""A pair whose histogram, settings and engine are those of its last fit reuses that fit's results
(flows/reuse.py), and they are what a refit gives: the same tables but for the fit's own timings."""
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import duckdb
import polars as pl
import pytest

from flows import reuse
from flows.warehouse import PairHistogram, open_warehouse
from glmm_model.schema import SCHEMAS
from tests.pipeline_helpers import ONE_EXPERIMENT, keep_one_experiment, make_demo, small, sql

TIMINGS = {"diagnostics": ["sampling_seconds", "total_seconds"]}  # the only columns a refit may change


def results(path, run_id: str) -> dict[str, pl.DataFrame]:
    """Every result table's rows of one run, without run_id and timings, in a fixed order."""
    out = {}
    for table, columns in SCHEMAS.items():
        kept = ["experiment_id", "metric_id"] + [c for c in columns if c not in TIMINGS.get(table, [])]
        out[table] = sql(path, f"SELECT {', '.join(kept)} FROM glmm.{table} WHERE run_id = ? ORDER BY ALL", [run_id])
    return out


def fit_inputs(path, run_id: str) -> pl.DataFrame:
    return sql(path, "SELECT experiment_id, metric_id, input_digest, fitted_in_run_id FROM glmm.fit_inputs "
                     "WHERE run_id = ? ORDER BY experiment_id, metric_id", [run_id])


def test_unchanged_pairs_reuse_their_last_fit_and_equal_a_refit_a_changed_pair_is_fitted(nightly, tmp_path):
    path = keep_one_experiment(make_demo(tmp_path / "demo.duckdb"))
    first = nightly(warehouse=str(path), options=small())
    fitted = fit_inputs(path, first.run_id)
    assert fitted.height == 4 and set(fitted["fitted_in_run_id"]) == {first.run_id}

    # nothing changed: every pair's results come from the first run, written again under the second's id
    second = nightly(warehouse=str(path), options=small())
    reused = fit_inputs(path, second.run_id)
    assert reused.equals(fitted)  # the same digests, and fitted in the first run
    before, again = results(path, first.run_id), results(path, second.run_id)
    for table in SCHEMAS:
        assert again[table].equals(before[table]), table
    assert before["lift"].height == 4 and before["posterior_draws"].height > 0
    assert second.lift.height == 4  # the run's own report carries the reused pairs too
    runs = open_warehouse(path).recent_runs(2)  # what glmm-ab status lists
    assert runs.select("run_id", "pairs_fitted", "pairs_reused", "pairs_failed").rows() == [
        (second.run_id, 0, 4, 0), (first.run_id, 4, 0, 0)]

    # --refit-all samples every pair again, and gets the same tables: reusing is what a refit would give
    refit = nightly(warehouse=str(path), options=small(reuse_fits=False))
    assert set(fit_inputs(path, refit.run_id)["fitted_in_run_id"]) == {refit.run_id}
    after = results(path, refit.run_id)
    for table in SCHEMAS:
        assert after[table].equals(before[table]), table

    # a user who had purchased buys again an hour ago (the experiment is running): the purchase count and
    # the purchases per cart change and are fitted; add-to-cart and conversion (converted already) are reused
    an_hour_ago = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(hours=1)
    with duckdb.connect(str(path)) as con:
        con.execute("""
            INSERT INTO raw.events SELECT 'new_purchase', min(user_id), 'purchase', ? FROM (
                SELECT user_id FROM raw.assignments WHERE experiment_id = ?
                GROUP BY user_id HAVING count(DISTINCT variant) = 1)  -- not a user in conflict (left out)
            WHERE user_id IN (SELECT user_id FROM raw.events WHERE event_name = 'purchase')""",
                    [an_hour_ago, ONE_EXPERIMENT])
    changed = nightly(warehouse=str(path), options=small())
    rows = fit_inputs(path, changed.run_id)
    fitted_in = dict(zip(rows["metric_id"], rows["fitted_in_run_id"]))
    assert fitted_in == {"purchases": changed.run_id, "purchases_per_cart": changed.run_id,
                         "add_to_cart": refit.run_id, "converted": refit.run_id}  # the last run that sampled them
    assert sql(path, "SELECT count(*) AS n FROM glmm.lift WHERE run_id = ?", [changed.run_id])["n"][0] == 4

    # a pair whose rows are gone from one table (pruned by hand) is fitted again, not written without them
    with duckdb.connect(str(path)) as con:
        con.execute("DELETE FROM glmm.lift WHERE run_id = ? AND metric_id = 'add_to_cart'", [changed.run_id])
    pruned = nightly(warehouse=str(path), options=small())
    rows = fit_inputs(path, pruned.run_id)
    assert dict(zip(rows["metric_id"], rows["fitted_in_run_id"])) == {
        "add_to_cart": pruned.run_id, "converted": refit.run_id, "purchases": changed.run_id,
        "purchases_per_cart": changed.run_id}
    assert sql(path, "SELECT count(*) AS n FROM glmm.lift WHERE run_id = ?", [pruned.run_id])["n"][0] == 4


def pair(histogram: pl.DataFrame, **changes) -> PairHistogram:
    return replace(PairHistogram("exp", "metric", "control", histogram), **changes)


def test_the_digest_names_every_input_of_a_fit():
    histogram = pl.DataFrame({"variant": ["control", "control", "treatment"], "cv_count": [0, 2, 1],
                              "n_users": [40, 3, 38]})
    base = reuse.pair_digest(pair(histogram), small())
    # the same rows in another order, or in another chunking, are the same inputs
    assert reuse.pair_digest(pair(histogram.reverse()), small()) == base
    assert reuse.pair_digest(pair(pl.concat([histogram[:1], histogram[1:]], rechunk=False)), small()) == base
    changed = [
        (pair(histogram.with_columns(n_users=pl.col("n_users") + 1)), small()),
        (pair(histogram.with_columns(pl.col("cv_count").cast(pl.Float64))), small()),
        (pair(histogram, control_variant="treatment"), small()),
        (pair(histogram, planned_split=(("control", 0.9), ("treatment", 0.1))), small()),
        (pair(histogram, metric_type="conversion"), small()),
        (pair(histogram, tolerated_drop=0.05), small()),
        (pair(histogram, metric_id="other"), small()),  # another pair: its own seed
        (pair(histogram), small(seed=43)),
        (pair(histogram), small(num_samples=301)),
        (pair(histogram), small(priors="article")),
        (pair(histogram), small(refits=0)),
        (pair(histogram, segments=(("platform", histogram.with_columns(segment=pl.lit("ios"))),)), small(segments=True)),
    ]
    digests = [reuse.pair_digest(p, options) for p, options in changed]
    assert len(set(digests) | {base}) == len(changed) + 1
    # the output settings do not change what a fit computes
    assert reuse.pair_digest(pair(histogram), small(plots_dir="x", publish_results=False, reuse_fits=False,
                                                    fit_timeout=60, task_runner="dask")) == base


@pytest.mark.parametrize("text", ["yes", 1])
def test_reuse_fits_must_be_true_or_false(text):
    with pytest.raises(ValueError, match="reuse_fits must be true or false"):
        small(reuse_fits=text)
