"""Helpers shared by the pipeline, publishing and dashboard tests."""
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl

from flows.demo import build
from flows.options import RunOptions
from flows.warehouse import open_warehouse

SMALL_FLOW = dict(num_chains=2, num_warmup=200, num_samples=300)


def small(**changes) -> RunOptions:
    """Run options with small sampler settings (2 chains x (200 + 300)), without the segment
    breakdowns (one more fit per run: the tests that read them ask for them)."""
    return RunOptions(**{**SMALL_FLOW, "segments": False, **changes})
EXE = str(Path(sys.executable).with_name("glmm-ab"))


def without_configured_api(env: dict) -> dict:
    """``env`` without the session's ``PREFECT_API_URL`` (tests/conftest.py): a command run with it starts
    its own temporary Prefect API, as it does for a user who configured none."""
    return {k: v for k, v in env.items() if k != "PREFECT_API_URL"}


def make_demo(path: Path) -> Path:
    open_warehouse(path).load_raw(build())
    return path


def sql(path, query, params=None):
    con = duckdb.connect(str(path), read_only=True)
    try:
        return pl.from_arrow(con.execute(query, params or []).to_arrow_table())
    finally:
        con.close()


def copy_warehouse(source: Path, folder: Path) -> Path:
    """A copy under the same file name: dbt-duckdb's views name their catalog after the file's stem."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.name
    target.write_bytes(source.read_bytes())
    return target


# The demo's cheapest experiment (2 arms, 300 users, no pre-period): 4 pairs to fit instead of 12.
ONE_EXPERIMENT = "pricing_copy"


def keep_one_experiment(path: Path, experiment_id: str = ONE_EXPERIMENT) -> Path:
    """Delete every other experiment's users from a demo warehouse's raw logs (their exposures, events and
    segments; the kept users' own platforms stay; raw.experiments stays whole): a run then fits that
    experiment's 4 pairs, not the demo's 16.
    For the tests of how runs behave (locks, reruns, backfill, runners, publishing), not of what they find.
    Rewriting raw history so far back is what the incremental per-user counts do not follow (a user needs
    ``--full-refresh``): their table goes too, so the next run counts from scratch."""
    con = duckdb.connect(str(path))
    try:
        con.execute("DROP TABLE IF EXISTS main.int_user_metric_counts")
        con.execute("DELETE FROM raw.assignments WHERE experiment_id <> ?", [experiment_id])
        # a segment row of another experiment, or a user-level one (no experiment) of a user not kept
        con.execute("DELETE FROM raw.user_segments WHERE experiment_id <> ? OR (experiment_id IS NULL AND "
                    "user_id NOT IN (SELECT user_id FROM raw.assignments))", [experiment_id])
        con.execute("DELETE FROM raw.events WHERE user_id NOT IN (SELECT user_id FROM raw.assignments)")
    finally:
        con.close()
    return path


def copy_one_experiment(source: Path, folder: Path, experiment_id: str = ONE_EXPERIMENT) -> Path:
    """A copy of a demo warehouse (its earlier results too, so the latest answers still span the demo)
    whose raw logs keep one experiment's users (:func:`keep_one_experiment`)."""
    return keep_one_experiment(copy_warehouse(source, folder), experiment_id)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def debian_package(command: str, package: str) -> str:
    """The path of ``command``, installing Debian's ``package`` with apt-get (as CI runs, as root, from the
    Debian package registry) when the machine lacks it."""
    path = shutil.which(command)
    if path is None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", package]
        if subprocess.run(install, capture_output=True, env=env, timeout=900).returncode != 0:
            subprocess.run(["apt-get", "update"], capture_output=True, env=env, timeout=600)
            proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
            assert proc.returncode == 0, f"could not install Debian's {package}: {proc.stderr[-2000:]}"
        path = shutil.which(command)
    assert path, f"{command} is not on PATH after installing Debian's {package}"
    return path


def expected_decision(latest: pl.DataFrame, experiment_id: str, variant: str) -> tuple[str, bool]:
    """The demo's experiment-level decision for one arm, recomputed from rpt_experiment_results_latest
    (purchases primary, add_to_cart a guardrail, threshold 0.1), and whether its guardrail passes."""
    arm = latest.filter((pl.col("experiment_id") == experiment_id) & (pl.col("variant") == variant))
    primary = arm.filter(pl.col("metric_id") == "purchases").row(0, named=True)
    guard = arm.filter(pl.col("metric_id") == "add_to_cart").row(0, named=True)
    guard_ok = guard["decision"] != "invalid" and guard["prob_drop_beyond_tolerance"] < 0.1
    decision = {"invalid": "invalid", "keep_control": "keep_control", "inconclusive": "inconclusive",
                "ship": "ship" if guard_ok else "blocked_by_guardrail"}[primary["decision"]]
    return decision, guard_ok
