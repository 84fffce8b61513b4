"""The first night on a fresh machine: ``glmm-ab demo`` with an empty program cache, then again.

    python tests/benchmarks/first_night.py [--runs 2] [-- DEMO FLAGS...]

Runs ``glmm-ab demo`` ``--runs`` times, each into a new warehouse file, all with one
``$GLMM_AB_JAX_CACHE`` that is empty before the first run (a new user's machine: the
first run traces and compiles every sampler program it needs, the later ones load them).
Flags after ``--`` go to every run (default: the demo's own settings, 4 chains x
(500 + 2000), segments on). Prints each run's wall time and its stages from
``glmm.runs.stage_seconds``, the programs on disk after it, and the fit stage of the first run
over that of the second (issue 14's target: at most 2).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

BIN = Path(sys.executable).parent


def one_run(folder: Path, cache: Path, flags: list[str]) -> dict:
    warehouse = folder / "demo.duckdb"
    env = {**os.environ, "GLMM_AB_JAX_CACHE": str(cache), "PREFECT_HOME": str(folder / "prefect"),
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}
    started = time.perf_counter()
    out = subprocess.run([str(BIN / "glmm-ab"), "demo", "--warehouse", str(warehouse), *flags],
                         capture_output=True, text=True, env=env, cwd=folder)
    wall = time.perf_counter() - started
    if out.returncode != 0:
        sys.exit(f"glmm-ab demo failed ({out.returncode}):\n{out.stderr[-3000:]}")
    with duckdb.connect(str(warehouse), read_only=True) as con:
        stages = json.loads(con.sql("SELECT stage_seconds FROM glmm.runs ORDER BY started_at DESC LIMIT 1").fetchone()[0])
    return {"wall": wall, "stages": stages, "programs": len(list((cache / "programs").glob("*.jax")))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("flags", nargs="*", help="flags for glmm-ab demo (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        rows = []
        for i in range(args.runs):
            folder = Path(tmp) / f"run{i}"
            folder.mkdir()
            rows.append(one_run(folder, cache, args.flags))
            print(f"run {i + 1}: {rows[-1]}", file=sys.stderr, flush=True)
    stages = sorted({s for r in rows for s in r["stages"]}, key=lambda s: (s != "dbt", s != "load", s != "fit", s))
    print("| run | cache | wall (s) | " + " | ".join(f"{s} (s)" for s in stages) + " | programs on disk after |")
    print("|---|---|---|" + "---|" * len(stages) + "---|")
    for i, r in enumerate(rows):
        cells = " | ".join(f"{r['stages'].get(s, 0.0):.1f}" for s in stages)
        print(f"| {i + 1} | {'empty' if i == 0 else 'warm'} | {r['wall']:.1f} | {cells} | {r['programs']} |")
    warm = statistics.median(r["stages"]["fit"] for r in rows[1:])
    print(f"\nfit stage, first run / warm runs' median: {rows[0]['stages']['fit']:.1f} / {warm:.1f} = "
          f"{rows[0]['stages']['fit'] / warm:.2f} (target <= 2). glmm-ab demo {' '.join(args.flags) or '(defaults)'}, "
          f"one cache, empty before run 1.")


if __name__ == "__main__":
    main()
