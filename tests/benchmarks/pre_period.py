"""The pre-period covariate: how much it narrows beta, whether its intervals hold, what binning costs.

    python tests/benchmarks/pre_period.py [--runs 80] [--users 2000] [--drifts 0.3,0.6] [--out FILE]

Each run simulates a Poisson-lognormal population (``glmm_model.simulate.with_pre_period``):
2,000 users in two arms, the control's mean count uniform in [1, 5], s = 0.8, a
pre-period of the same length in which each user's log-rate moved by
Normal(0, drift), and 10% new users (no history, their log-rate 0.5 lower). The
true effect is drawn beta ~ Normal(0, 0.25), and the fits use that prior on beta
(``Priors(beta_scale=0.25)``), so a 90% interval should hold the truth 90% of
the time. Every run is fitted three ways, side by side on the same users:

* **with** the covariate, binned as the nightly job bins it (at most 8 bins);
* **none**: the same users without the column;
* **exact**: every distinct pre-period count its own bin (on every 4th run), for the
  binning error: the difference of beta's posterior mean and sd against the binned fit,
  in units of the exact fit's sd.

Reported per drift: the median ratio of beta's posterior sd (with / none) from NUTS and
the Laplace ratio the fit reports (``covariate_sd_ratio``), the 90% and 95% coverage of
both fits with Monte Carlo standard errors, and the binning error. Sampler: 2 chains x
(500 + 1000), the settings' medians being what counts here. Not run by pytest: ~12
minutes per drift on a 2-core machine.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from glmm_model import FitConfig, Priors, SamplerConfig, configure, fit  # noqa: E402
from glmm_model.simulate import with_pre_period  # noqa: E402

EFFECT_SD = 0.25


def beta_row(result) -> tuple[float, float, np.ndarray]:
    row = result.posterior_summary.filter(pl.col("parameter") == "beta")
    return float(row["mean"][0]), float(row["sd"][0]), result.posterior.flat("beta")[:, 0]


def covered(draws: np.ndarray, truth: float, level: float) -> bool:
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return bool(low <= truth <= high)


def study(drift: float, runs: int, users: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    config = FitConfig(priors=Priors(beta_scale=EFFECT_SD),
                       sampler=SamplerConfig(num_chains=2, num_warmup=500, num_samples=1000, progress_bar=False))
    out = {"drift": drift, "ratio_nuts": [], "ratio_laplace": [], "cover": {k: {0.9: [], 0.95: []} for k in ("with", "none")},
           "bin_mean_err": [], "bin_sd_err": [], "cells": [], "cells_exact": [], "seconds": {"with": [], "none": []},
           "invalid": 0}
    for run in range(runs):
        beta = rng.normal(0.0, EFFECT_SD)
        mean = rng.uniform(1.0, 5.0)
        frame, _ = with_pre_period(users, mean, [0.0, beta], 0.8, drift, seed=int(rng.integers(2**31)),
                                   no_history_share=0.1, no_history_shift=-0.5)
        fits = {}
        for name, cfg in (("with", config), ("none", config.with_(covariate=False))):
            started = time.perf_counter()
            fits[name] = fit(frame, "v0", cfg.with_(sampler=SamplerConfig(
                num_chains=2, num_warmup=500, num_samples=1000, progress_bar=False, seed=run)))
            out["seconds"][name].append(time.perf_counter() - started)
        if not (fits["with"].diagnostics["converged"][0] and fits["none"].diagnostics["converged"][0]):
            out["invalid"] += 1
        (_, sd_with, d_with), (_, sd_none, d_none) = beta_row(fits["with"]), beta_row(fits["none"])
        out["ratio_nuts"].append(sd_with / sd_none)
        out["ratio_laplace"].append(float(fits["with"].diagnostics["covariate_sd_ratio"][0]))
        out["cells"].append(int(fits["with"].diagnostics["n_cells"][0]))
        for name, draws in (("with", d_with), ("none", d_none)):
            for level in (0.9, 0.95):
                out["cover"][name][level].append(covered(draws, beta, level))
        if run % 4 == 0:
            exact = fit(frame, "v0", config.with_(pre_period_bins=10**9, sampler=SamplerConfig(
                num_chains=2, num_warmup=500, num_samples=1000, progress_bar=False, seed=run)))
            m_exact, sd_exact, _ = beta_row(exact)
            m_bin, sd_bin, _ = beta_row(fits["with"])
            out["bin_mean_err"].append(abs(m_bin - m_exact) / sd_exact)
            out["bin_sd_err"].append(sd_bin / sd_exact - 1.0)
            out["cells_exact"].append(int(exact.diagnostics["n_cells"][0]))
        print(f"drift {drift} run {run + 1}/{runs}: sd ratio {sd_with / sd_none:.3f}", file=sys.stderr, flush=True)
    return out


def rate(hits: list[bool]) -> str:
    p = float(np.mean(hits))
    return f"{p:.3f} ± {np.sqrt(p * (1 - p) / len(hits)):.3f}"


def markdown(results: list[dict], users: int, wall: float) -> str:
    lines = [
        f"Pre-period covariate, {users} users per experiment, {len(results[0]['ratio_nuts'])} runs per drift "
        f"({wall / 60:.1f} min in all)",
        "",
        "| drift sd | sd ratio with / none, NUTS (median) | covariate_sd_ratio, Laplace (median) | 90% coverage with | "
        "90% none | 95% with | 95% none | binning: abs(mean error) / sd (median, max) | binning: sd error (median) | "
        "cells binned / exact (median) | fit s with / none (median) | runs not converged |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c = r["cover"]
        lines.append(
            f"| {r['drift']} | {np.median(r['ratio_nuts']):.3f} | {np.nanmedian(r['ratio_laplace']):.3f} | "
            f"{rate(c['with'][0.9])} | {rate(c['none'][0.9])} | {rate(c['with'][0.95])} | {rate(c['none'][0.95])} | "
            f"{np.median(r['bin_mean_err']):.3f}, {np.max(r['bin_mean_err']):.3f} | {np.median(r['bin_sd_err']):+.3f} | "
            f"{np.median(r['cells']):.0f} / {np.median(r['cells_exact']):.0f} | "
            f"{np.median(r['seconds']['with']):.1f} / {np.median(r['seconds']['none']):.1f} | {r['invalid']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=80)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--drifts", default="0.3,0.6")
    parser.add_argument("--seed", type=int, default=20261130)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    configure()
    started = time.perf_counter()
    results = []
    for k, drift in enumerate(float(d) for d in args.drifts.split(",")):
        results.append(study(drift, args.runs, args.users, args.seed + k))
        text = markdown(results, args.users, time.perf_counter() - started)
        if args.out:
            Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
