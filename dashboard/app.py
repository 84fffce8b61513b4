"""glmm-ab dashboard (Streamlit): ``glmm-ab dashboard`` starts it.

Reads the published BI copy read-only, one connection per query (see
:mod:`dashboard.data`), so the nightly run can replace it at any time. It opens on
every experiment's decision (primary metrics and guardrails together). Pick an
experiment and a metric; see each treatment's lift with its interval, the chance
to beat control and the decision, the diagnostics, the article's three pictures
(trace, per-user predictive, estimated-rate density) drawn from the published
tables, the chance to win over time, and the health of every experiment.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import polars as pl
import streamlit as st

from dashboard import charts, data  # the installed package, wherever this script runs from

DECISION_BADGES = {  # label, colour
    "ship": ("Ship", "green"),
    "keep_control": ("Keep control", "red"),
    "inconclusive": ("Inconclusive", "gray"),
    "invalid": ("Invalid", "orange"),
    "blocked_by_guardrail": ("Blocked by a guardrail", "red"),
    "no_primary_metric": ("No primary metric", "gray"),
}
METRIC_TYPE_NOTES = {
    "conversion": "A conversion metric: each user converted or not; the lift compares the shares of users who did.",
    "ratio": "A ratio metric: events per denominator event; the lift compares the rates per denominator event.",
}
HEALTH_COLOURS = {"ok": "green", "warning": "orange", "failed": "red"}


def published_path() -> Path:
    args = sys.argv[1:]
    if "--published" in args and args.index("--published") + 1 < len(args):
        return Path(args[args.index("--published") + 1])
    return data.default_published_path()


MARKDOWN_ACTIVE = re.compile(r"([\\`*\[\](){}<>!#|~$:+]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")


def md(text) -> str:
    """A value from raw data (an experiment, metric or variant id) as literal text inside Streamlit
    markdown: links, images, emphasis, colour directives and LaTeX are escaped, not rendered."""
    return MARKDOWN_ACTIVE.sub(r"\\\1", str(text))


def pct(x: float) -> str:
    return f"{x:+.1%}"


def show_lift(row: dict, arms: int) -> None:
    st.subheader(f"{md(row['variant'])} vs {md(row['control_variant'])}")
    label, colour = DECISION_BADGES.get(row["decision"], (row["decision"], "gray"))
    st.badge(f"Decision: {label}", color=colour)
    a, b, c, d = st.columns(4)
    # the median leads: at small n the mean of exp(beta) - 1 is pulled up by the right tail
    a.metric("Relative lift", pct(row["relative_lift_median"]),
             help="Posterior median of exp(beta) - 1, with its 95% credible interval below "
                  f"(posterior mean {pct(row['relative_lift_mean'])}).")
    a.caption(f"95% interval {pct(row['relative_lift_low'])} to {pct(row['relative_lift_high'])}")
    b.metric("P(beat control)", f"{row['prob_beat_control']:.1%}")
    if arms > 2 and row["prob_best"] is not None:  # None: a run from before P(best) was recorded
        b.caption(f"P(best of {arms} arms) {row['prob_best']:.1%}; expected loss vs the best "
                  f"{row['expected_loss_vs_best']:.2%}")
    c.metric("Expected count per user", f"{row['expected_count_mean']:.3g}",
             delta=f"{row['expected_count_mean'] - row['expected_count_control_mean']:+.3g} vs control")
    d.metric("Users", f"{row['n_users']:,} / {row['n_users_control']:,}", help="treatment / control")
    if row.get("tolerated_drop") is not None and row.get("prob_drop_beyond_tolerance") is not None:
        st.caption(f"Guardrail: P(drop beyond its tolerated {row['tolerated_drop']:.0%}) "
                   f"{row['prob_drop_beyond_tolerance']:.1%}")
    st.caption(f"Why: {row['decision_reason']}. Expected loss if shipped {row['expected_loss_ship']:.2%}, "
               f"if kept {row['expected_loss_keep']:.2%}; P(difference within the ROPE) {row['prob_in_rope']:.1%}.")


def show_diagnostics(row: dict) -> None:
    checks = [
        ("Converged" if row["converged"] else "Not converged", "green" if row["converged"] else "red"),
        (f"R-hat {row['max_r_hat']:.3f}", "green" if row["max_r_hat"] <= 1.01 else "orange"),
        (f"ESS {row['min_ess_bulk']:.0f}", "green" if row["min_ess_bulk"] >= 400 else "orange"),
        (f"Divergences {row['divergences']}", "green" if row["divergences"] == 0 else "red"),
        (f"SRM p {row['srm_p_value']:.3f}", "green" if row["srm_p_value"] >= 0.001 else "red"),
        (f"PPC p {row['ppc_p_value_adjusted']:.2f} (adjusted)",
         "green" if row["ppc_p_value_adjusted"] >= 0.01 else "orange"),
    ]
    cols = st.columns(len(checks))
    for col, (text, colour) in zip(cols, checks):
        with col:
            st.badge(text, color=colour)


def covariate_text(row: dict) -> str | None:
    """What the pre-period covariate bought this pair, or None when it was not used."""
    ratio = row.get("covariate_sd_ratio")
    if row.get("covariate") != "pre_period" or ratio is None:
        return None
    change = f"{1 - ratio:.0%} narrower" if ratio < 1 else f"{ratio - 1:.0%} wider"
    return (f"Adjusted for each user's count before the test (pre-period covariate): the effect's interval is "
            f"{change} than without it (posterior sd x {ratio:.2f}).")


def spread_text(row: dict) -> str:
    """How much the effect differs across one dimension's segments, in words."""
    text = (f"The effect's spread across {md(row['dimension'])} segments (sd, log scale): median "
            f"{row['effect_spread_median']:.2f}, 95% interval {row['effect_spread_low']:.2f} to "
            f"{row['effect_spread_high']:.2f}. Segment lifts are pulled toward the overall "
            f"{pct(row['overall_relative_lift_mean'])} as far as that spread allows.")
    if not row["valid"]:
        text += " This breakdown's fit did not converge: do not read its segment lifts."
    return text


def show_segments(table) -> None:
    """Each dimension's segments: partially pooled lift, interval, P(beat control) and the segment's SRM."""
    st.subheader("Segments")
    if table is None or table.height == 0:
        st.caption("No segment breakdown: add raw.user_segments (user x dimension x segment) to break the "
                   "primary metrics down by platform, country, ...")
        return
    for part in table.partition_by(["dimension", "variant"], maintain_order=True):
        first = part.row(0, named=True)
        st.markdown(f"**{md(first['dimension'])}**, {md(first['variant'])}")
        st.caption(spread_text(first))
        shown = part.select(
            segment=part["segment"],
            users=part["n_users"] + part["n_users_control"],
            relative_lift=part["relative_lift_mean"],
            interval=pl.Series([f"{pct(r['relative_lift_low'])} to {pct(r['relative_lift_high'])}"
                                for r in part.iter_rows(named=True)], dtype=pl.String),
            p_beat_control=part["prob_beat_control"],
            srm=pl.when(part["srm_mismatch"]).then(pl.lit("mismatch")).otherwise(pl.lit("ok")),
        )
        st.dataframe(shown, hide_index=True, column_config={
            "relative_lift": st.column_config.NumberColumn(format="percent"),
            "p_beat_control": st.column_config.NumberColumn(format="percent")})


def lift_text(row: dict) -> str | None:
    """The primary metric's mean relative lift and its 95% interval, as the overview shows it."""
    if row["primary_relative_lift_mean"] is None:
        return None
    return (f"{pct(row['primary_relative_lift_mean'])} [{pct(row['primary_relative_lift_low'])}, "
            f"{pct(row['primary_relative_lift_high'])}]")


def show_overview(table) -> None:
    """What a product manager reads first: every experiment's decision, primary lift, guardrails and health."""
    st.markdown("**Decisions**: every experiment, newest first (primary metrics and guardrails together)")
    if table is None:
        st.caption("This copy was published before experiment-level decisions (rpt_experiment_decisions).")
        return
    shown = table.select(
        experiment=table["experiment_id"],
        variant=table["variant"],
        control=table["control_variant"],
        decision=table["decision"].replace_strict({k: v[0] for k, v in DECISION_BADGES.items()},
                                                  default=table["decision"]),
        primary_metric=table["primary_metric_id"],
        primary_lift=pl.Series([lift_text(r) for r in table.iter_rows(named=True)], dtype=pl.String),
        p_beat_control=table["primary_prob_beat_control"],
        guardrails=table["guardrail_status"],
        health=table["health"],
        days_running=table["days_running"].round(1),
        why=table["decision_reason"],
    )
    st.dataframe(shown, hide_index=True, column_config={"p_beat_control": st.column_config.NumberColumn(format="percent")})


def main() -> None:
    st.set_page_config(page_title="glmm-ab experiments", layout="wide")
    st.title("glmm-ab experiment results")
    path = published_path()
    try:
        pub = data.publication(path)
        pairs = data.pairs(path)
    except data.DashboardDataError as exc:
        st.error(str(exc))
        st.stop()
    st.caption(f"Published run `{pub['run_id']}` at {pub['published_at']:%Y-%m-%d %H:%M} UTC, from `{path}` (read-only)")
    if pairs.height == 0:
        st.warning("The publication holds no experiment results yet.")
        st.stop()
    show_overview(data.overview(path))

    experiments = pairs["experiment_id"].unique(maintain_order=True).to_list()
    experiment = st.sidebar.selectbox("Experiment", experiments, key="experiment")
    metrics = pairs.filter(pairs["experiment_id"] == experiment)["metric_id"].to_list()
    metric = st.sidebar.selectbox("Metric", metrics, key="metric")

    rows = data.latest(path, experiment, metric)
    first = rows.row(0, named=True)
    st.header(f"{md(experiment)} · {md(metric)}")
    st.caption(f"Run `{first['run_id']}`, conversions counted up to {first['as_of']:%Y-%m-%d %H:%M}; "
               f"experiment started {first['experiment_start_at']:%Y-%m-%d}")
    if first.get("metric_type") in METRIC_TYPE_NOTES:
        st.caption(METRIC_TYPE_NOTES[first["metric_type"]])
    gain = covariate_text(first)
    if gain:
        st.caption(gain)
    arms = rows.height + 1
    if arms > 2 and first["prob_best_control"] is not None:
        st.caption(f"Control {md(first['control_variant'])}: P(best of {arms} arms) {first['prob_best_control']:.1%}; "
                   f"expected loss vs the best {first['expected_loss_vs_best_control']:.2%}")
    for row in rows.iter_rows(named=True):
        show_lift(row, arms)
    st.markdown("**Diagnostics**")
    show_diagnostics(first)
    show_segments(data.segments(path, experiment, metric))

    run_id = first["run_id"]
    left, right = st.columns(2)
    with left:
        st.subheader("Chance to win over time")
        st.altair_chart(charts.lift_history_chart(data.history(path, experiment, metric)), width="stretch")
    with right:
        st.subheader("Estimated rate by arm")
        st.altair_chart(charts.rate_density_chart(data.rate_density(path, run_id, experiment, metric)), width="stretch")
    st.subheader("Trace plot")
    st.caption("Thinned posterior draws per chain: well-mixed chains look like overlapping noise.")
    st.altair_chart(charts.trace_chart(data.trace(path, run_id, experiment, metric)))
    st.subheader("Per-user predictive")
    st.caption("Replicated counts of sample users; the dashed red line is what each user did.")
    st.altair_chart(charts.user_predictive_chart(data.user_predictive(path, run_id, experiment, metric)))
    with st.expander("Posterior predictive check: observed share of users per count vs the model's interval"):
        st.altair_chart(charts.predictive_check_chart(data.predictive_check(path, run_id, experiment, metric)),
                        width="stretch")

    st.subheader("Health")
    health = data.health(path)
    for row in health.filter((health["experiment_id"] == experiment) & (health["metric_id"] == metric)).iter_rows(named=True):
        st.badge(f"Health: {row['health_status']}", color=HEALTH_COLOURS.get(row["health_status"], "gray"))
        if row["health_reasons"]:
            st.caption(md(row["health_reasons"]))
    issues = data.data_issues(path, experiment)
    if issues.height:
        st.markdown(f"**Data issues** of {md(experiment)} and the event log (dq_data_issues)")
        st.dataframe(issues, hide_index=True)
    st.markdown("**Every experiment**")
    st.dataframe(health, hide_index=True)

# Streamlit runs this file as __main__. A process started with multiprocessing's "spawn" (a Dask
# worker of a run started from a process that showed the app) re-runs its parent's main file as
# __mp_main__: it must not draw the page there.
if __name__ == "__main__":
    main()
