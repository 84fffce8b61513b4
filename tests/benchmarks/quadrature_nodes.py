"""What the collapsed likelihood's first count tier costs, what its rule buys, and the loop's step size.

    python tests/benchmarks/quadrature_nodes.py [--rules split48,sym128] [--step-work 512,1024]
                                                [--pairs 6] [--users 1000] [--rounds 1]

The collapsed path integrates each cell's random intercept by adaptive Gauss-Hermite
quadrature (:mod:`glmm_model.quadrature`), with a rule per count tier. Counts 0-2 use
the split rule of 2 x 24 nodes (a half-range rule on each side of the mode); every other
tier uses 12-24 symmetric nodes. Most users of a count metric have 0-2 events, so this
tier is most of a gradient's arithmetic. Two tables:

1. **Accuracy** of the tier's rule against QUADPACK (``tests/test_quadrature.py``'s reference)
   for y in 0, 1, 2, eta in -5..8 (14 values) and s in 0.05..3 (12 values): the largest
   absolute error of log L, over all s and over s up to 2, 1.5 and 1; symmetric rules
   ("sym") and split ones ("split"), by total nodes.
2. **Time**: the fit-stage benchmark's pairs (``fit_stage_runners.pairs``: simulated from the
   model, s 0.3-1.0) fitted with the default sampler (4 chains x (500 + 2000), refits off) with
   each first-tier rule of ``--rules`` ("split48": the split rule of 48 nodes, "sym128": the
   symmetric rule of 128). Each runs in its own process with its own program
   cache (the exported programs are named by the source of the defining modules, which does
   not see a patched constant). Per pair: the median of two timed fits after one that compiles.
   Also the largest change of the relative lift's median and of P(beat control) against the
   default rule's fit (seeds are the same, so the difference is the rule's), and the largest draw of s.
   The same, with the default rule, for each ``--step-work`` (the nodes x cells a loop step of the
   likelihood computes, :data:`glmm_model.quadrature.STEP_WORK`: a tier's last step is padded to
   it). ``--rounds`` runs every setting's process that many times, alternating; a pair's time is
   the median over rounds.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def accuracy_table() -> list[str]:
    from glmm_model import quadrature as q
    from test_quadrature import scipy_log_marginal

    points = [(y, e, s) for y in (0, 1, 2) for e in np.linspace(-5, 8, 14) for s in np.linspace(0.05, 3, 12)]
    reference = np.array([scipy_log_marginal(y, e, s) for y, e, s in points])
    y, eta, s = (np.array(column, float) for column in zip(*points))
    lines = ["| rule | max abs error of log L, s <= 3 | s <= 2 | s <= 1.5 | s <= 1 |", "|---|---|---|---|---|"]
    rules = [(n, False) for n in (16, 24, 32, 48, 64, 96, 128)] + [(n, True) for n in (24, 32, 40, 48, 64)]
    for n, split in rules:
        error = np.abs(q.log_marginal(y, eta, s, n, xp=np, split=split) - reference)
        lines.append(f"| {rule_name(n, split)} | {error.max():.1e} | {error[s <= 2].max():.1e} | "
                     f"{error[s <= 1.5].max():.1e} | {error[s <= 1].max():.1e} |")
    return lines


def rule_name(nodes: int, split: bool) -> str:
    return f"{'split' if split else 'sym'}{nodes}"


def parse_rule(name: str) -> tuple[int, bool]:
    """"split48" -> (48, True); "sym128" -> (128, False)."""
    split = name.startswith("split")
    return int(name[5 if split else 3:]), split


def worker(rule: str, step_work: int, n_pairs: int, users: int) -> None:
    """Fit the pairs with the first tier on ``rule`` and loop steps of ``step_work``; one JSON
    line per pair."""
    from glmm_model import quadrature as q

    q.COUNT_TIERS = ((q.COUNT_TIERS[0][0], *parse_rule(rule)),) + q.COUNT_TIERS[1:]
    q.STEP_WORK = step_work
    from fit_stage_runners import pairs
    from flows.options import RunOptions
    from glmm_model import configure, fit

    configure()
    options = RunOptions(refits=0)
    for pair in pairs(n_pairs, users):
        config = options.fit_config(pair.experiment_id, pair.metric_id)
        fit(pair.histogram, pair.control_variant, config)  # traces and compiles
        times = []
        for _ in range(2):
            result = fit(pair.histogram, pair.control_variant, config)
            times.append(result.posterior.seconds)
        lift = result.lift.row(0, named=True)
        print(json.dumps({"pair": f"{pair.experiment_id}/{pair.metric_id}", "seconds": statistics.median(times),
                          "lift": lift["relative_lift_median"], "prob": lift["prob_beat_control"],
                          "max_s": float(result.posterior.draws["s"].max())}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from glmm_model.quadrature import COUNT_TIERS, STEP_WORK

    default_rule = rule_name(*COUNT_TIERS[0][1:])
    parser.add_argument("--rules", default=f"{default_rule},sym128")
    parser.add_argument("--step-work", default=str(STEP_WORK))
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), args.pairs, args.users)
        return
    print("\n".join(accuracy_table()), "\n", flush=True)
    base_setting = (default_rule, STEP_WORK)
    settings = sorted({(r, STEP_WORK) for r in args.rules.split(",")} | {base_setting}
                      | {(default_rule, int(w)) for w in args.step_work.split(",")})
    runs = {setting: [] for setting in settings}
    with tempfile.TemporaryDirectory(prefix="glmm-ab-nodes-") as tmp:  # each setting's program cache
        for _ in range(args.rounds):
            for setting in settings:
                env = {**os.environ, "GLMM_AB_JAX_CACHE": os.path.join(tmp, "{}-{}".format(*setting))}
                proc = subprocess.run([sys.executable, __file__, "--worker", *map(str, setting), "--pairs",
                                       str(args.pairs), "--users", str(args.users)],
                                      capture_output=True, text=True, env=env, check=True)
                runs[setting] += [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]

    def per_pair(rows):  # each pair's median over rounds, then the median over pairs
        by_pair = {}
        for r in rows:
            by_pair.setdefault(r["pair"], []).append(r["seconds"])
        return statistics.median(statistics.median(times) for times in by_pair.values())

    base = {r["pair"]: r for r in runs[base_setting]}
    base_median = per_pair(runs[base_setting])
    print(f"| first-tier rule | STEP_WORK | sampling s per pair, median | ratio to {default_rule}, {STEP_WORK} "
          "| max abs change of lift median | max abs change of P(beat control) | largest draw of s |")
    print("|---|---|---|---|---|---|---|")
    for (rule, step_work), rows in runs.items():
        median = per_pair(rows)
        d_lift = max(abs(r["lift"] - base[r["pair"]]["lift"]) for r in rows)
        d_prob = max(abs(r["prob"] - base[r["pair"]]["prob"]) for r in rows)
        print(f"| {rule} | {step_work} | {median:.2f} | {median / base_median:.2f} | {d_lift:.1e} | {d_prob:.1e} | "
              f"{max(r['max_s'] for r in rows):.2f} |")
    print(f"\n{args.pairs} pairs x {args.users} users, default sampler (4 chains x (500 + 2000)), refits off, "
          f"{args.rounds} round(s).")


if __name__ == "__main__":
    main()
