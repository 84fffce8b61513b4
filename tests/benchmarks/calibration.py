"""Calibration of the decisions, regime by regime: interval coverage, P(beat control), A/A, 'invalid'.

    python tests/benchmarks/calibration.py [--runs 150] [--aa-runs 100] [--regimes tiny,small,...] [--out FILE]

For each regime (tiny: 10 users per arm; small: 100 per arm; sparse: 0.01
conversions per user over 50,000 users; heavy: 300 per user with s = 1.5;
unequal: a declared 90/10 split; three arms; conversion: a conversion metric,
Bernoulli per user with the effect on the log-odds; ratio: a ratio metric, numerator
events Poisson-lognormal with the user's 1 + Poisson(3) denominator events as
exposure), experiments are simulated from the model itself and fitted exactly as
the nightly job fits them (collapsed, default sampler: 4 chains x (500 + 2000),
refits on divergences, every decision rule):

* **Effect runs.** Each treatment's true effect is drawn beta ~ Normal(0, 0.25) and
  the fit uses that same prior on beta (``Priors(beta_scale=0.25)``): when the
  prior describes the effects one runs, a 90% interval should hold the truth 90% of
  the time and, of the comparisons given P(beat control) ~ p, a share p should truly
  beat the control. Reported: 90% and 95% coverage of the relative lift, and a
  reliability table of P(beat control) (predicted vs realised, in bins).
* **A/A runs.** No effect, default priors (what a team gets without tuning): the
  share of experiments in which some arm is labelled 'ship'. The rule ships at
  P(beat control) >= 0.95 (1 - 0.05/m with m treatments), so about 5% is honest:
  with a flat prior P(beat control) is uniform under no effect, and the prior's
  shrinkage towards 0 can only lower it.
* Every run counts towards the 'invalid' rate; the reasons are listed.

Base rates and the spread s are drawn per experiment from the regime's ranges.
Monte Carlo standard errors are given beside each rate. Prints markdown; --out
also writes it (after each regime) to a file. Not run by pytest: ~40 minutes on a
2-core machine at the defaults.
"""
from __future__ import annotations

import argparse
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from glmm_model import FitConfig, Priors, SamplerConfig, configure, fit  # noqa: E402
from glmm_model.simulate import from_model  # noqa: E402

EFFECT_SD = 0.25  # sd of the true log effects in effect runs, and the prior the fit is given for them
VERBOSE = False
BINS = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)  # P(beat control) bins of the reliability table


@dataclass(frozen=True)
class Regime:
    name: str
    n_users: int
    base: tuple[float, float]  # the control's mean count per user: uniform in this range
    spread: tuple[float, float]  # s: uniform in this range
    arms: int = 2
    sizes: tuple[int, ...] | None = None  # exact users per arm; else random assignment
    split: tuple[float, ...] | None = None  # the planned (and declared) split; None = equal
    metric_type: str = "count"  # conversion: base is P(convert) in the control; ratio: events per denominator event

    def describe(self) -> str:
        who = "/".join(map(str, self.sizes)) if self.sizes else f"{self.n_users:,}"
        split = "" if self.split is None else " (" + "/".join(f"{w:.0%}" for w in self.split) + " declared)"
        rate = f"{self.base[0]:g}" if self.base[0] == self.base[1] else f"{self.base[0]:g}-{self.base[1]:g}"
        s = f"{self.spread[0]:g}" if self.spread[0] == self.spread[1] else f"{self.spread[0]:g}-{self.spread[1]:g}"
        if self.metric_type == "conversion":
            return f"{who} users{split}, {self.arms} arms, conversion, P(convert) {rate}"
        if self.metric_type == "ratio":
            return f"{who} users{split}, {self.arms} arms, ratio, {rate} per denominator event, s {s}"
        return f"{who} users{split}, {self.arms} arms, mean {rate}/user, s {s}"


REGIMES = (
    Regime("tiny", 20, (0.8, 2.6), (0.6, 1.1), sizes=(10, 10)),
    Regime("small", 200, (0.5, 3.0), (0.3, 1.2), sizes=(100, 100)),
    Regime("sparse", 50_000, (0.01, 0.01), (0.3, 1.2)),
    Regime("heavy", 200, (300.0, 300.0), (1.5, 1.5)),
    Regime("unequal", 2_000, (0.5, 3.0), (0.3, 1.2), split=(0.9, 0.1)),
    Regime("three_arms", 600, (0.5, 3.0), (0.3, 1.2), arms=3),
    Regime("conversion", 2_000, (0.02, 0.3), (0.0, 0.0), metric_type="conversion"),
    Regime("ratio", 1_000, (0.2, 1.0), (0.3, 1.0), metric_type="ratio"),
)


def simulate(regime: Regime, betas: np.ndarray, rng: np.random.Generator):
    """One experiment's per-user data, and each treatment's true relative lift."""
    base, seed = float(rng.uniform(*regime.base)), int(rng.integers(1 << 31))
    if regime.metric_type == "count":
        data, _ = from_model(regime.n_users, base, betas, float(rng.uniform(*regime.spread)), seed=seed,
                             split=regime.split, sizes=regime.sizes)
        return data, np.expm1(betas[1:])
    sim = np.random.default_rng(seed)
    arm = sim.choice(len(betas), size=regime.n_users, p=regime.split)
    if regime.metric_type == "conversion":  # beta on the log-odds; the lift is the ratio of probabilities
        p = 1.0 / (1.0 + np.exp(-(np.log(base / (1 - base)) + betas)))
        data = pl.DataFrame({"variant": np.char.add("v", arm.astype(str)), "cv_count": sim.random(arm.size) < p[arm]})
        return data.with_columns(pl.col("cv_count").cast(pl.Int64)), p[1:] / p[0] - 1
    s = float(rng.uniform(*regime.spread))  # ratio: events per denominator event, base the control's mean rate
    denominator = 1 + sim.poisson(3.0, arm.size)
    eta = np.log(base) - s**2 / 2 + betas[arm] + np.log(denominator) + sim.normal(0.0, s, arm.size)
    data = pl.DataFrame({"variant": np.char.add("v", arm.astype(str)), "cv_count": sim.poisson(np.exp(eta)),
                         "exposure": denominator.astype(float)})
    return data, np.expm1(betas[1:])


def lift_draws(result, metric_type: str) -> np.ndarray:
    """(draws, treatments) of the relative lift, as the fit defines it for its metric type."""
    beta = result.posterior.flat("beta").reshape(-1, result.data.num_arms - 1)
    if metric_type != "conversion":
        return np.expm1(beta)
    beta0 = result.posterior.flat("beta0")[:, None]
    p = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    return p(beta0 + beta) / p(beta0) - 1


def one_run(regime: Regime, rng: np.random.Generator, seed: int, aa: bool) -> dict:
    betas = np.concatenate([[0.0], np.zeros(regime.arms - 1) if aa else rng.normal(0.0, EFFECT_SD, regime.arms - 1)])
    data, true_lift = simulate(regime, betas, rng)
    split = None if regime.split is None else {f"v{i}": w for i, w in enumerate(regime.split)}
    priors = Priors() if aa else Priors(beta_scale=EFFECT_SD)
    config = FitConfig(priors=priors, planned_split=split, sampler=SamplerConfig(seed=seed, progress_bar=False),
                       metric_type=regime.metric_type)
    result = fit(data, "v0", config)
    if VERBOSE:
        print(f"  {regime.name} {seed}: {result.diagnostics['total_seconds'][0]:.1f} s, cells {result.data.n_cells}, "
              f"{result.lift['decision'].to_list()}", file=sys.stderr, flush=True)
    lift = lift_draws(result, regime.metric_type)  # (draws, treatments)
    out = {"decisions": result.lift["decision"].to_list(), "prob_beat": result.lift["prob_beat_control"].to_list(),
           "true_lift": np.asarray(true_lift).tolist(), "failure": result.diagnostics["failure_reasons"][0],
           "attempts": int(result.diagnostics["fit_attempts"][0]), "seconds": float(result.diagnostics["total_seconds"][0])}
    for level in (0.90, 0.95):
        low, high = np.quantile(lift, [(1 - level) / 2, (1 + level) / 2], axis=0)
        out[f"covered_{level:.2f}"] = [bool(lo <= t <= hi) for lo, hi, t in zip(low, high, out["true_lift"])]
    return out


def share(hits) -> tuple[float, float]:
    """A rate and its Monte Carlo standard error."""
    n = len(hits)
    p = float(np.mean(hits)) if n else float("nan")
    return p, float(np.sqrt(p * (1 - p) / n)) if n else float("nan")


def reliability(prob: list[float], truth: list[bool]) -> list[dict]:
    prob, truth = np.asarray(prob), np.asarray(truth, dtype=float)
    rows = []
    for lo, hi in zip(BINS[:-1], BINS[1:]):
        inside = (prob >= lo) & ((prob < hi) if hi < 1 else (prob <= hi))
        if inside.any():
            predicted, realised = float(prob[inside].mean()), float(truth[inside].mean())
            # the sd of the realised share if the predictions were exact
            se = float(np.sqrt(np.sum(prob[inside] * (1 - prob[inside])))) / inside.sum()
            rows.append({"bin": f"[{lo:.2f}, {hi:.2f}{']' if hi == 1 else ')'}", "n": int(inside.sum()),
                         "predicted": predicted, "realised": realised, "z": (realised - predicted) / max(se, 1e-9)})
    return rows


def study(regime: Regime, runs: int, aa_runs: int) -> dict:
    rng = np.random.default_rng(zlib.crc32(regime.name.encode()))
    effect = [one_run(regime, rng, i, aa=False) for i in range(runs)]
    aa = [one_run(regime, rng, runs + i, aa=True) for i in range(aa_runs)]
    every = effect + aa
    flat = lambda key, runs_: [v for r in runs_ for v in r[key]]  # noqa: E731
    return {
        "regime": regime,
        "runs": len(every),
        "comparisons": len(flat("true_lift", effect)),
        "cover90": share(flat("covered_0.90", effect)),
        "cover95": share(flat("covered_0.95", effect)),
        "reliability": reliability(flat("prob_beat", effect), [t > 0 for t in flat("true_lift", effect)]),
        "aa_experiments": len(aa),
        "aa_ship": share([("ship" in r["decisions"]) for r in aa]),
        "aa_ship_comparisons": share([d == "ship" for d in flat("decisions", aa)]),
        "invalid": share([r["decisions"][0] == "invalid" for r in every]),
        "refit": sum(r["attempts"] > 1 for r in every),
        "reasons": Counter(r["failure"].split(" (")[0] for r in every if r["failure"]),
        "seconds": float(np.median([r["seconds"] for r in every])),
    }


def markdown(results: list[dict], wall: float) -> str:
    pm = lambda rate: f"{rate[0]:.3f} ± {rate[1]:.3f}"  # noqa: E731
    lines = ["| regime | design | runs | coverage 90% | coverage 95% | P(beat) calibration: max abs z | A/A: experiments shipping an arm | invalid | refit | median s/fit |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        zmax = max((abs(b["z"]) for b in r["reliability"] if b["n"] >= 10), default=float("nan"))
        lines.append(f"| {r['regime'].name} | {r['regime'].describe()} | {r['runs']} | {pm(r['cover90'])} | {pm(r['cover95'])} | "
                     f"{zmax:.1f} | {pm(r['aa_ship'])} ({r['aa_experiments']}) | {pm(r['invalid'])} | {r['refit']} | {r['seconds']:.1f} |")
    lines += ["", "P(beat control) reliability (effect runs; realised = share of comparisons whose true lift is > 0; "
              "z = (realised - predicted) / its sd if the predictions were exact):", "",
              "| regime | bin | n | mean P(beat) | realised | z |", "|---|---|---|---|---|---|"]
    for r in results:
        for b in r["reliability"]:
            lines.append(f"| {r['regime'].name} | {b['bin']} | {b['n']} | {b['predicted']:.3f} | {b['realised']:.3f} | {b['z']:+.1f} |")
    reasons = {r["regime"].name: dict(r["reasons"]) for r in results if r["reasons"]}
    lines += ["", f"Invalid, by reason: {reasons or 'none'}.",
              f"Coverage and rates are ± one Monte Carlo standard error. Effect runs: beta ~ N(0, {EFFECT_SD}) per treatment, "
              f"fitted with that prior; A/A runs: default priors. Sampler: the default (4 chains x (500 + 2000), "
              f"divergence refits). Wall time {wall:.0f} s."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="effect runs per regime (0: A/A only)")
    parser.add_argument("--aa-runs", type=int, default=60, help="A/A runs per regime")
    parser.add_argument("--regimes", default=",".join(r.name for r in REGIMES))
    parser.add_argument("--out", default=None)
    parser.add_argument("--verbose", action="store_true", help="a line per fit on stderr")
    args = parser.parse_args()
    global VERBOSE
    VERBOSE = args.verbose
    chosen = [r for r in REGIMES if r.name in args.regimes.split(",")]
    configure()
    started, results = time.perf_counter(), []
    for regime in chosen:
        results.append(study(regime, args.runs, args.aa_runs))
        print(f"{regime.name}: done at {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        if args.out:  # the regimes done so far, in case a long study is cut short
            Path(args.out).write_text(markdown(results, time.perf_counter() - started) + "\n")
    print(markdown(results, time.perf_counter() - started))


if __name__ == "__main__":
    main()
