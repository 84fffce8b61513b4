"""The ``glmm-ab fit`` command as a user runs it: a real subprocess on real files."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from conftest import article_frame

EXE = shutil.which("glmm-ab") or os.path.join(os.path.dirname(sys.executable), "glmm-ab")
SMALL_ARGS = ["--chains", "2", "--warmup", "200", "--samples", "300"]


def run(*args, cwd=None):
    return subprocess.run([EXE, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def article_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "some.csv"
    article_frame().write_csv(path)
    return path


def test_fit_json_has_the_documented_keys(article_csv):
    out = run("fit", str(article_csv), "--control", "CG", "--json", *SMALL_ARGS)
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout)
    assert set(payload) == {"posterior_summary", "lift", "diagnostics"}
    lift = payload["lift"][0]
    assert lift["variant"] == "TG" and lift["control_variant"] == "CG"
    assert 0.0 <= lift["prob_beat_control"] <= 1.0
    assert lift["decision"] in {"ship", "keep_control", "inconclusive", "invalid"}
    assert [r["parameter"] for r in payload["posterior_summary"]] == ["beta0", "beta", "s"]
    assert payload["diagnostics"][0]["num_samples"] == 300
    assert "\x1b" not in out.stderr  # no progress bar when output is not a terminal


def test_fit_readable_table_from_parquet_with_plots(tmp_path):
    path = tmp_path / "data.parquet"
    article_frame().write_parquet(path)
    out = run("fit", str(path), "--control", "CG", "--plots-dir", str(tmp_path / "plots"), *SMALL_ARGS)
    assert out.returncode == 0, out.stderr
    assert "Lift against control CG" in out.stdout and "TG" in out.stdout
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["rate_density.png", "trace.png", "user_predictive.png"]


@pytest.mark.parametrize(
    "rows, control, message",
    [
        ({"variant": ["A", "B"], "cv_count": [1, -3]}, "A", "non-negative"),
        ({"variant": ["A", "B"], "cv_count": [1, 2]}, "Z", "control variant 'Z'"),
        ({"variant": ["A", "A"], "cv_count": [1, 2]}, "A", "only one arm"),
        ({"variant": ["A", "B"], "cv_count": [1, 2], "exposure": [0.0, 1.0]}, "A", "exposure"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, rows, control, message):
    path = tmp_path / "bad.csv"
    pl.DataFrame(rows).write_csv(path)
    plots = tmp_path / "plots"
    out = run("fit", str(path), "--control", control, "--plots-dir", str(plots), "--json")
    assert out.returncode == 2
    assert out.stdout == ""
    assert message in out.stderr
    assert not plots.exists()


def test_missing_and_unsupported_files_exit_2(tmp_path):
    assert run("fit", str(tmp_path / "nope.csv"), "--control", "A").returncode == 2
    (tmp_path / "x.txt").write_text("variant,cv_count\n")
    out = run("fit", str(tmp_path / "x.txt"), "--control", "A")
    assert out.returncode == 2 and ".csv or .parquet" in out.stderr
    empty = tmp_path / "empty.csv"
    empty.write_text("variant,cv_count\n")
    out = run("fit", str(empty), "--control", "A")
    assert out.returncode == 2 and "empty" in out.stderr


@pytest.mark.parametrize("option, value, message", [
    ("--seed", "-1", "seed must be in [0, 2**32)"),
    ("--ci-level", "1.5", "ci_level must be in (0.5, 1)"),
    ("--chains", "0", "num_chains and num_samples must be >= 1"),
])
def test_out_of_range_settings_exit_2_with_the_reason(article_csv, option, value, message):
    out = run("fit", str(article_csv), "--control", "CG", option, value)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


def test_progress_bar_shows_in_a_terminal(article_csv):
    """Under a real pseudo-terminal the sampler's progress bar is drawn (and not otherwise, above)."""
    import fcntl
    import pty
    import struct
    import termios

    primary, secondary = pty.openpty()
    # a real terminal has a size; tqdm hides bars on a 0-row one
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen([EXE, "fit", str(article_csv), "--control", "CG", *SMALL_ARGS],
                            stdin=secondary, stdout=secondary, stderr=secondary, close_fds=True)
    os.close(secondary)
    out = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # EIO once the child has closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(primary)
    assert proc.wait(timeout=600) == 0
    assert b"NUTS x2 chains" in out and b"100%" in out
    assert b"Lift against control CG" in out


def test_run_options_are_one_definition_for_the_cli_the_flow_and_served_runs(tmp_path):
    """Flags, the flow's parameter and a served run's JSON parameters all become the same RunOptions."""
    from flows.cli import build_parser
    from flows.nightly import nightly
    from flows.options import RunOptions

    args = build_parser().parse_args(["run", "--chains", "2", "--samples", "300", "--exposure", "--no-publish",
                                      "--plots-dir", "pics"])
    options = RunOptions.from_args(args)
    assert options == RunOptions(num_chains=2, num_samples=300, use_exposure=True, publish_results=False,
                                 plots_dir="pics")
    assert options.run_config() == {"method": "collapsed", "priors": "default", "num_chains": 2, "num_warmup": 500,
                                    "num_samples": 300, "seed": 42, "refits": 2, "use_covariate": True,
                                    "use_exposure": True}
    assert options.fit_config("e", "m").sampler.divergence_refits == ((0.95, 2), (0.99, 4))
    assert RunOptions(refits=0).fit_config("e", "m").sampler.divergence_refits == ()
    with pytest.raises(ValueError, match="refits must be 0, 1 or 2"):
        RunOptions(refits=3)
    # what `glmm-ab serve` registers is JSON; Prefect validates it back into the same options
    served = options.with_absolute_paths()
    params = nightly.validate_parameters({"warehouse": "w.duckdb", "options": json.loads(json.dumps(served.to_dict()))})
    assert params["options"] == served and served.plots_dir == str(Path("pics").resolve())
    with pytest.raises(ValueError, match="num_chains must be a whole number >= 1"):
        RunOptions(num_chains=0)
    # the per-pair time limit reaches each fit's sampler; 0 means none; it is not a statistical setting
    timed = RunOptions.from_args(build_parser().parse_args(["run", "--fit-timeout", "30"]))
    assert timed.fit_config("e", "m").sampler.time_limit_s == 30
    assert RunOptions(fit_timeout=0).fit_config("e", "m").sampler.time_limit_s is None
    assert "fit_timeout" not in timed.run_config()
    # --no-segments skips the breakdowns (on by default); it changes no pair's answer, so no statistical setting
    assert RunOptions.from_args(build_parser().parse_args(["backfill", "--from", "2026-01-01", "--to", "2026-01-02",
                                                           "--no-segments"])).segments is False
    assert options.segments is True and "segments" not in options.run_config()
    with pytest.raises(ValueError, match="segments must be true or false"):
        RunOptions(segments="no")
    for bad in (-1, float("nan"), True):
        with pytest.raises(ValueError, match="fit_timeout must be a number of seconds >= 0"):
            RunOptions(fit_timeout=bad)


def test_fit_command_imports_neither_prefect_nor_dbt_nor_duckdb(article_csv):
    probe = ("import sys; from flows.cli import main; code = main(sys.argv[1:]); "
             "print(sorted(m for m in ('prefect', 'dbt', 'duckdb') if m in sys.modules)); sys.exit(code)")
    out = subprocess.run([sys.executable, "-c", probe, "fit", str(article_csv), "--control", "CG", "--json", *SMALL_ARGS],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_bad_run_options_exit_2_before_anything_runs(tmp_path):
    warehouse = tmp_path / "never-created.duckdb"
    out = run("run", "--warehouse", str(warehouse), "--chains", "0")
    assert out.returncode == 2 and "num_chains must be a whole number >= 1" in out.stderr, out.stderr
    assert not warehouse.exists()
