"""Altair charts of the dashboard, each drawn from one published table (never by refitting).

The three pictures of the source article, plus the lift history and the
predictive check. Each function takes the rows :mod:`dashboard.data` returns.
"""
from __future__ import annotations

import altair as alt
import polars as pl

ARM_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def _parameter_label(draws: pl.DataFrame) -> pl.DataFrame:
    return draws.with_columns(
        series=pl.when(pl.col("variant").is_null()).then(pl.col("parameter"))
        .otherwise(pl.col("parameter") + "[" + pl.col("variant") + "]"),
        chain=pl.col("chain").cast(pl.String),
    )


def trace_chart(draws: pl.DataFrame) -> alt.VConcatChart:
    """The trace plot: per parameter, its thinned draws per chain (left) and their density (right)."""
    rows = []
    for series in _parameter_label(draws).partition_by("series", maintain_order=True):
        name = series["series"][0]
        base = alt.Chart(series).encode(color=alt.Color("chain:N", title="chain"))
        lines = base.mark_line(opacity=0.7, strokeWidth=1).encode(
            x=alt.X("draw:Q", title="draw"), y=alt.Y("value:Q", title=name, scale=alt.Scale(zero=False)),
        ).properties(width=480, height=110)
        density = base.transform_density("value", groupby=["chain"], as_=["value", "density"]).mark_line().encode(
            x=alt.X("value:Q", title=name, scale=alt.Scale(zero=False)), y=alt.Y("density:Q", title="density"),
        ).properties(width=220, height=110)
        rows.append(alt.hconcat(lines, density))
    return alt.vconcat(*rows)


def user_predictive_chart(rows: pl.DataFrame) -> alt.Chart:
    """Per sampled user: the binned posterior predictive of their count, observed count in dashed red."""
    data = rows.with_columns(
        title=pl.format("{} ({}), observed {}", pl.col("user_label"), pl.col("variant"), pl.col("observed_count")),
        count_end=pl.col("count_high") + 1,
    )
    bars = alt.Chart().mark_bar(opacity=0.7, color="steelblue").encode(
        x=alt.X("count_low:Q", title="count"), x2="count_end:Q", y=alt.Y("probability:Q", title="probability"),
        y2=alt.datum(0),
    )
    observed = alt.Chart().mark_rule(color="red", strokeDash=[4, 3], strokeWidth=2).encode(x="observed_mid:Q") \
        .transform_calculate(observed_mid="datum.observed_count + 0.5")
    return alt.layer(bars, observed, data=data).properties(width=200, height=80).facet(
        facet=alt.Facet("title:N", title=None, sort=alt.SortField("sample_user")), columns=3,
    ).resolve_scale(x="independent", y="independent")


def rate_density_chart(rows: pl.DataFrame) -> alt.Chart:
    """The article's TG/CG plot: density of a random user's estimated rate per arm."""
    data = rows.with_columns(
        rate=(pl.col("rate_low") + pl.col("rate_high")) / 2,
        arm=pl.when(pl.col("is_control")).then(pl.col("variant") + " (control)").otherwise(pl.col("variant")),
    )
    return alt.Chart(data).mark_area(opacity=0.4, interpolate="step").encode(
        x=alt.X("rate:Q", title="estimated conversions per user"),
        y=alt.Y("density:Q", title="density", stack=None),
        color=alt.Color("arm:N", title="arm", scale=alt.Scale(range=ARM_COLOURS)),
    ).properties(width=300, height=320)


def lift_history_chart(rows: pl.DataFrame) -> alt.Chart:
    """Chance to win over time: P(beat control) per run, and the relative lift with its interval."""
    base = alt.Chart(rows).encode(x=alt.X("as_of:T", title="as of", axis=alt.Axis(format="%Y-%m-%d %H:%M")),
                                  color=alt.Color("variant:N"))
    prob = base.mark_line(point=True).encode(
        y=alt.Y("prob_beat_control:Q", title="P(beat control)", scale=alt.Scale(domain=[0, 1])),
        tooltip=["as_of:T", "variant:N", alt.Tooltip("prob_beat_control:Q", format=".3f"), "decision:N"],
    ).properties(width=380, height=180)
    band = base.mark_area(opacity=0.2).encode(
        y=alt.Y("relative_lift_low:Q", title="relative lift", axis=alt.Axis(format="%")), y2="relative_lift_high:Q",
    )
    line = base.mark_line(point=True).encode(y="relative_lift_mean:Q")
    return alt.vconcat(prob, (band + line).properties(width=380, height=180))


def predictive_check_chart(rows: pl.DataFrame) -> alt.Chart:
    """Observed share of users per count bin (points) against the model's interval (bars)."""
    data = rows.with_columns(
        bin=pl.when(pl.col("count_high").is_null()).then(pl.format("{}+", pl.col("count_low")))
        .when(pl.col("count_low") == pl.col("count_high")).then(pl.col("count_low").cast(pl.String))
        .otherwise(pl.format("{}–{}", pl.col("count_low"), pl.col("count_high"))),
    )
    sort = alt.SortField("count_low")
    interval = alt.Chart().mark_bar(opacity=0.3).encode(
        x=alt.X("bin:N", sort=sort, title="count"), y=alt.Y("predicted_share_low:Q", title="share of users"),
        y2="predicted_share_high:Q",
    )
    observed = alt.Chart().mark_point(filled=True, color="black").encode(
        x=alt.X("bin:N", sort=sort), y="observed_share:Q",
    )
    return alt.layer(interval, observed, data=data).properties(height=160).facet(row=alt.Row("variant:N", title=None))
