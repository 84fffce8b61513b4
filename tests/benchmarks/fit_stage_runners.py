"""The fit stage on each task runner, side by side: N pairs fitted sequentially vs on a Dask LocalCluster.

    python tests/benchmarks/fit_stage_runners.py [--pairs 40] [--users 1000] [--workers 2] [--repeats 2]

Builds N experiment x metric histograms (``--users`` users each, drawn from the model
with different base rates and lifts), then runs the nightly's fit stage
(:func:`flows.nightly.fit_pairs`: ``fit_pair.map``) inside a Prefect flow with the
sequential runner and with ``--task-runner dask`` (a LocalCluster of ``--workers``
single-threaded worker processes), alternating, ``--repeats`` times each. The first
repeat of each compiles or loads the programs (the Dask workers load them from the
shared disk cache); the table reports every repeat and the median of the later ones.
Default sampler settings (4 chains x (500 + 2000)). Checks that both runners give the
same lift rows.
"""
from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
if "PREFECT_HOME" not in os.environ:  # a Prefect home of its own, removed when the benchmark exits
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="glmm-ab-bench-prefect-")
    atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow  # noqa: E402

from flows.nightly import fit_pairs  # noqa: E402
from flows.options import RunOptions  # noqa: E402
from flows.runners import task_runner  # noqa: E402
from flows.warehouse import PairHistogram  # noqa: E402
from glmm_model.simulate import from_model  # noqa: E402


def pairs(n: int, users: int) -> list[PairHistogram]:
    rng = np.random.default_rng(13)
    out = []
    for i in range(n):
        data, _ = from_model(users, float(rng.uniform(0.5, 3)), [0.0, float(rng.normal(0, 0.1))], float(rng.uniform(0.3, 1.0)),
                             seed=i)
        histogram = data.group_by("variant", "cv_count").len("n_users").sort("variant", "cv_count")
        out.append(PairHistogram(f"exp{i // 2:03d}", f"metric{i % 2}", "v0", histogram))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    work = pairs(args.pairs, args.users)
    options = RunOptions(refits=0)
    runners = {"sequential": task_runner("sequential"), f"dask ({args.workers} workers)": task_runner("dask", args.workers)}
    seconds = {name: [] for name in runners}
    lifts = {}
    for repeat in range(args.repeats):
        for name, runner in runners.items():
            stage = flow(fit_pairs, name="bench-fits", task_runner=runner, validate_parameters=False)
            started = time.perf_counter()
            results, failures = stage(work, options)
            seconds[name].append(time.perf_counter() - started)
            assert failures.height == 0, failures
            lifts[name] = results["lift"].sort("experiment_id", "metric_id")
            print(f"{name}, repeat {repeat + 1}: {seconds[name][-1]:.1f} s", file=sys.stderr, flush=True)
    names = list(runners)
    same = lifts[names[0]].equals(lifts[names[1]])
    later = {name: statistics.median(v[1:] or v) for name, v in seconds.items()}
    print(f"| runner | pairs | users per pair | seconds per repeat | median (repeats after the first) | ratio to sequential |")
    print("|---|---|---|---|---|---|")
    for name in names:
        print(f"| {name} | {args.pairs} | {args.users:,} | {', '.join(f'{s:.1f}' for s in seconds[name])} | "
              f"{later[name]:.1f} | {later[name] / later[names[0]]:.2f} |")
    print(f"\nLift rows identical across runners: {same}. {os.cpu_count()} cores; default sampler, refits off.")


if __name__ == "__main__":
    main()
