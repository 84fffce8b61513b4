"""Shared fixtures. Sampler settings are small here; agreement tests ask for more."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile


def _scratch(prefix: str) -> str:
    """A temporary folder for this test process, removed when it exits (each run used to leave two)."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


# Prefect writes its database and settings under PREFECT_HOME: keep tests out of ~/.prefect. Each
# pytest-xdist worker has its own (and its own API server, below).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["PREFECT_HOME"] = _scratch(f"glmm-ab-prefect-{os.environ['PYTEST_XDIST_WORKER']}-")
if "PREFECT_HOME" not in os.environ:
    os.environ["PREFECT_HOME"] = _scratch("glmm-ab-prefect-")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network: telemetry would log errors
os.environ.setdefault("GLMM_AB_JAX_CACHE", os.path.join(tempfile.gettempdir(), "glmm-ab-test-jax-cache"))
if "GLMM_AB_DBT_STATE" not in os.environ:
    os.environ["GLMM_AB_DBT_STATE"] = _scratch("glmm-ab-dbt-state-")

import numpy as np
import polars as pl
import pytest

from glmm_model import DecisionRules, FitConfig, SamplerConfig, configure

configure()

SMALL = SamplerConfig(num_chains=2, num_warmup=300, num_samples=400, seed=1, progress_bar=False)


def article_frame() -> pl.DataFrame:
    """The source article's 200 users, generated exactly as it does (numpy seed 42)."""
    np.random.seed(42)
    num_users = 200
    group = np.random.binomial(1, 0.5, size=num_users)
    cv_intensity = 1.5 * group + 1
    cv_count = np.random.negative_binomial(n=10, p=1 / (1 + cv_intensity), size=num_users)
    return pl.DataFrame(
        {
            "user_id": [f"u{i:03d}" for i in range(num_users)],
            "variant": np.where(group == 1, "TG", "CG"),
            "cv_count": cv_count,
        }
    )


@pytest.fixture(scope="session")
def article_data() -> pl.DataFrame:
    return article_frame()


@pytest.fixture
def small_config() -> FitConfig:
    # R-hat threshold relaxed for 2 x 400 draws, so a healthy small fit is not labelled invalid.
    return FitConfig(sampler=SMALL, decision=DecisionRules(max_r_hat=1.05))


_api = None


def pytest_configure(config):
    """One Prefect API server for the process that runs the tests, started before the test modules
    are imported and named in ``PREFECT_API_URL``: the flows run in this process and every ``glmm-ab``
    command the tests start use it, as a team's scheduled job uses its configured API, instead of each
    command starting a temporary one (~8 s of CPU each). The tests of the temporary server's own path
    drop the variable (:func:`pipeline_helpers.without_configured_api`). Not in pytest-xdist's
    controller, which runs no test."""
    global _api
    runs_tests = hasattr(config, "workerinput") or getattr(config.option, "dist", "no") == "no"
    if runs_tests and not os.environ.get("PREFECT_API_URL"):
        from flows.prefect_api import STARTUP_TIMEOUT_ENV, TemporaryApi

        _api = TemporaryApi()
        _api.wait(float(os.environ[STARTUP_TIMEOUT_ENV]))
        os.environ["PREFECT_API_URL"] = _api.url


# Scheduling on two pytest-xdist workers (-n 2 --no-loadscope-reorder in pyproject.toml, the
# scheduler below). Every file that reads the demo warehouse (the session fixture demo_run: two
# nights of the demo, minutes to build) goes to one worker, as one unit, so it is built once; every
# other file is a unit of its own, so its module fixtures are built once too. The units go out in
# this order, the longest first (seconds each took under two workers, CI of 2026-12-01): the demo
# files on one worker, the others on the second, short files filling in at the end. A file not
# listed runs after these; a stale order costs balance, never a result.
DEMO_GROUP = "demo_run"
DEMO_FILES = ("test_dashboard", "test_dask", "test_operations", "test_pipeline", "test_publish")
LONGEST_FIRST = (DEMO_GROUP, "test_spark", "test_stopping", "test_tiny", "test_wheel", "test_segments", "test_fit",
                 "test_programs", "test_raw_drift", "test_limits", "test_bad_input", "test_cli", "test_planned_split")


def _unit(path: str) -> str:
    """The scheduling unit of a test file ('tests/test_x.py' or a Path)."""
    stem = os.path.splitext(os.path.basename(str(path)))[0]
    return DEMO_GROUP if stem in DEMO_FILES else stem


def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's file-by-file scheduler, with the demo files as one unit (its own groups,
    --dist loadgroup, no longer reach the scheduler under pytest 9: they rename a test's id
    through an attribute pytest 9 does not read)."""
    from xdist.scheduler import LoadScopeScheduling

    class DemoFilesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid.split("::", 1)[0])

    return DemoFilesTogether(config, log)


def pytest_collection_modifyitems(config, items):
    unlisted = sorted({item.path.name for item in items
                       if "demo_run" in item.fixturenames and _unit(item.path) != DEMO_GROUP})
    if unlisted:  # it would build the demo warehouse on a second worker
        raise pytest.UsageError(f"{', '.join(unlisted)} read demo_run: add them to DEMO_FILES in tests/conftest.py")
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(_unit(item.path), len(rank)))  # stable: a file's own order is kept


@pytest.hookimpl(trylast=True)  # after the session's fixtures are torn down
def pytest_sessionfinish(session, exitstatus):
    """Stop the API before a pytest-xdist worker reports that it finished: the controller then ends the
    worker, and a server stopped later (at unconfigure) was left running."""
    global _api
    if _api is not None:
        from flows.prefect_api import drain_prefect_workers

        drain_prefect_workers()
        _api.stop()
        _api = None


@pytest.fixture(scope="session")
def harness():
    """The flows of this process report to the session's Prefect API (:func:`pytest_configure`)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: os.environ["PREFECT_API_URL"]}):
        yield


@pytest.fixture(scope="session")
def nightly(harness):
    from flows.nightly import nightly

    return nightly


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, nightly):
    """One demo warehouse and two runs of the flow on it (each publishing its BI copy); later tests read it."""
    from pipeline_helpers import small, make_demo

    path = make_demo(tmp_path_factory.mktemp("wh") / "demo.duckdb")
    first = nightly(warehouse=str(path), options=small(plots_dir=str(path.parent / "plots"), segments=True))
    second = nightly(warehouse=str(path), options=small(segments=True))
    return path, first, second
