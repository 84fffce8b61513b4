"""Benchmark 2: collapsed fit time and memory vs number of users.

    python tests/benchmarks/fit_vs_users.py [--sizes 200 20000 1000000 10000000]

For each size: simulate users (2 arms, 2 conversions per user on average, s = 0.5),
build the histogram from the per-user rows (one vectorised polars group-by, O(n)),
then fit the histogram twice with the default sampler (4 chains x (500 + 2000)):
the first fit may compile (or load from the on-disk cache), the second is the
"compiled program cached" time the target refers to. Peak memory growth during
each fit is read by a thread polling the process's resident set size. Prints a
markdown table.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from glmm_model import FitConfig, SamplerConfig, fit, prepare  # noqa: E402
from glmm_model import configure  # noqa: E402
from glmm_model.simulate import from_model  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class PeakRss:
    """Peak resident set size growth (MB) while the block runs, polled every 5 ms."""

    def __enter__(self):
        self.base = self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.growth = self.peak - self.base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 20_000, 1_000_000, 10_000_000])
    args = parser.parse_args()
    configure()
    config = FitConfig(sampler=SamplerConfig(progress_bar=False))
    rows = []
    for n in args.sizes:
        users, _ = from_model(n, 2.0, [0.0, 0.1], 0.5, seed=n)
        started = time.perf_counter()
        hist = prepare(users, "v0")
        histogram = pl.DataFrame({
            "variant": [hist.variants[a] for a in hist.cell_arm], "cv_count": hist.cell_count, "n_users": hist.cell_users,
        })
        build = time.perf_counter() - started
        del users
        times, growth = [], []
        for _ in range(2):
            with PeakRss() as mem:
                started = time.perf_counter()
                result = fit(histogram, "v0", config)
                times.append(time.perf_counter() - started)
            growth.append(mem.growth)
        rows.append((n, hist.n_cells, build, times[0], times[1], growth[1], result.lift["relative_lift_mean"][0]))
        print(f"{n} users done", file=sys.stderr, flush=True)
    print("| users | histogram cells | histogram build (s) | first fit (s) | cached fit (s) | fit peak RSS growth (MB) | relative lift (true +10.5%) |")
    print("|---|---|---|---|---|---|---|")
    for n, cells, build, first, cached, mem, lift in rows:
        print(f"| {n:,} | {cells} | {build:.2f} | {first:.2f} | {cached:.2f} | {mem:.0f} | {lift:+.1%} |")
    print("\nDefault sampler (4 chains x (500 warmup + 2000 draws)), collapsed path, histogram input; "
          "the first fit of a process loads or compiles the program for its padded shape.")


if __name__ == "__main__":
    main()
