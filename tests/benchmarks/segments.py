"""Segment breakdowns: do the partially pooled segment lifts hold the truth, and what does pooling buy?

    python tests/benchmarks/segments.py [--runs 40] [--seed 0] [--out FILE]

Each run draws an experiment from the segment model's own priors, so its intervals
should hold the truth at their nominal rate: four segments of unequal size (3,000,
1,500, 600 and 150 users, half per arm), control mean per user uniform in [0.5, 3]
per segment, per-user log-rates Normal(0, 0.8); the overall log effect beta ~
Normal(0, 0.25) (fitted with that prior, ``Priors(beta_scale=0.25)``), the spread of
the effect across segments tau ~ HalfNormal(0.25) (the model's prior) and each
segment's deviation b_k ~ Normal(0, tau). Each run is fitted once
(:func:`glmm_model.segments.fit_segments`) as the nightly job fits it: its default sampler,
4 chains x (500 + 2000), and divergence refits.

Reported: the 90% and 95% coverage of the segment lifts (each segment's true lift
exp(beta + b_k) - 1), overall and per segment size, with Monte Carlo standard errors;
the coverage of the spread's 90% interval; the root mean squared error of the segments'
log effects, pooled (posterior mean of log(1 + lift)) against unpooled (each segment's
observed log ratio of mean counts, what a one-dimension-at-a-time breakdown reports);
the invalid rate and seconds per fit. Not run by pytest.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from glmm_model import FitConfig, Priors, SamplerConfig, configure  # noqa: E402
from glmm_model.segments import fit_segments  # noqa: E402

EFFECT_SD, SPREAD_SCALE, S = 0.25, 0.25, 0.8
SIZES = (3000, 1500, 600, 150)


def simulate(rng: np.random.Generator) -> tuple[pl.DataFrame, dict]:
    beta = rng.normal(0.0, EFFECT_SD)
    tau = abs(rng.normal(0.0, SPREAD_SCALE))
    b = rng.normal(0.0, tau, len(SIZES))
    parts, observed = [], []
    for k, n in enumerate(SIZES):
        arm = rng.permutation(np.arange(n) % 2)
        mean = rng.uniform(0.5, 3.0)
        eta = np.log(mean) - S * S / 2 + (beta + b[k]) * arm + rng.normal(0.0, S, n)
        y = rng.poisson(np.exp(eta))
        parts.append(pl.DataFrame({"variant": np.where(arm == 1, "B", "A"), "cv_count": y, "segment": f"s{k}"}))
        m_t, m_c = y[arm == 1].mean(), y[arm == 0].mean()
        observed.append(np.log((m_t + 0.5 / n) / (m_c + 0.5 / n)))  # a zero arm stays finite
    return pl.concat(parts), {"beta": beta, "tau": tau, "effect": beta + b, "observed": np.array(observed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the tables as markdown here")
    args = parser.parse_args()
    configure()
    rng = np.random.default_rng(args.seed)
    rows = []
    for run in range(args.runs):
        data, truth = simulate(rng)
        config = FitConfig(priors=Priors(beta_scale=EFFECT_SD), ci_level=0.90,
                           sampler=SamplerConfig(seed=run, progress_bar=False))
        started = time.perf_counter()
        result = fit_segments(data, "A", config)
        seconds = time.perf_counter() - started
        wide = fit_segments_draws(result)
        spread = result.segment_spread.row(0, named=True)
        for k, row in enumerate(result.segment_lift.sort("segment").iter_rows(named=True)):
            true_lift = float(np.expm1(truth["effect"][k]))
            draws = wide[:, k]
            lo95, hi95 = np.quantile(np.expm1(draws), [0.025, 0.975])
            rows.append({
                "run": run, "segment": k, "users": SIZES[k], "tau": truth["tau"], "valid": row["valid"],
                "cover90": row["relative_lift_low"] <= true_lift <= row["relative_lift_high"],
                "cover95": lo95 <= true_lift <= hi95,
                "err_pooled": float(draws.mean() - truth["effect"][k]),
                "err_unpooled": float(truth["observed"][k] - truth["effect"][k]),
                "spread_cover90": spread["effect_spread_low"] <= truth["tau"] <= spread["effect_spread_high"],
                "seconds": seconds, "divergences": row["divergences"],
            })
        print(f"run {run}: tau {truth['tau']:.3f}, spread median {spread['effect_spread_median']:.3f}, "
              f"valid {spread['valid']} (R-hat {spread['max_r_hat']:.3f}, divergences {spread['divergences']}), "
              f"{seconds:.1f} s", flush=True)
    report(pl.DataFrame(rows), args)


def fit_segments_draws(result) -> np.ndarray:
    """Each segment's log effect draws (draws x segments) of the first treatment."""
    seg_beta = np.asarray(result.draws["segment_beta"])  # (chain, draw, K, T)
    return seg_beta[:, :, :, 0].reshape(-1, seg_beta.shape[2])


def _rate(values: pl.Series) -> str:
    p, n = float(values.mean()), values.len()
    return f"{p:.3f} ± {np.sqrt(p * (1 - p) / n):.3f}"


def report(frame: pl.DataFrame, args) -> None:
    lines = [f"Segment study: {args.runs} runs (seed {args.seed}), segments of {', '.join(map(str, SIZES))} users", "",
             "| segment users | comparisons | coverage 90% | coverage 95% | RMSE log effect, pooled | unpooled |",
             "|---|---|---|---|---|---|"]
    for users, part in [*((f"{n:,}", frame.filter(pl.col("users") == n)) for n in SIZES), ("all", frame)]:
        lines.append(f"| {users} | {part.height} | {_rate(part['cover90'])} | {_rate(part['cover95'])} | "
                     f"{np.sqrt((part['err_pooled'] ** 2).mean()):.3f} | {np.sqrt((part['err_unpooled'] ** 2).mean()):.3f} |")
    per_run = frame.group_by("run").agg(pl.col("spread_cover90").first(), pl.col("valid").first(),
                                        pl.col("seconds").first())
    lines += ["", f"Spread (tau) inside its 90% interval: {_rate(per_run['spread_cover90'])}; "
                  f"invalid fits: {int((~per_run['valid']).sum())} of {per_run.height}; "
                  f"median seconds per fit {per_run['seconds'].median():.1f}"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
