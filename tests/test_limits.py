"""Fits that are wide, slow or stopped: a 200-variant experiment fits to completion (it used to hang
forever), sampling stops at its time limit, and a fit can be cancelled from another thread."""
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import polars as pl
import pytest

from glmm_model import FitCancelled, FitConfig, FitTimeout, SamplerConfig, cancel_running, fit
from glmm_model.sampling import MAX_VECTORISED_DIM, chain_groups

WIDE_FIT = textwrap.dedent("""
    import numpy as np, polars as pl
    from glmm_model import FitConfig, SamplerConfig, configure, fit
    configure()
    rng = np.random.default_rng(1)
    rows = [(f"v{i:03d}", int(c)) for i in range(200) for c in rng.poisson(1.5, 5)]
    data = pl.DataFrame(rows, orient="row", schema=["variant", "cv_count"])
    # 4 chains: two groups sampling at once, as the nightly job does. Shallow trees keep the test short;
    # the hang came on the first chunk of draws whatever the depth.
    sampler = SamplerConfig(num_chains=4, num_warmup=20, num_samples=20, max_tree_depth=4, progress_bar=False,
                            divergence_refits=())
    result = fit(data, "v000", FitConfig(sampler=sampler))
    print("lift rows", result.lift.height)
""")


def test_a_200_variant_experiment_fits_to_completion():
    """It used to stop at 0% CPU for good: two chain groups each inside a batched Cholesky of the 201 x 201
    mass matrix, each waiting for pieces queued on XLA's two pool threads, which both were. A subprocess, so
    that a hang fails this test instead of the whole suite."""
    proc = subprocess.run([sys.executable, "-c", WIDE_FIT], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "lift rows 199" in proc.stdout


def test_chains_run_in_pairs_only_while_the_mass_matrix_is_small():
    assert chain_groups(4, mass_dim=3) == [2, 2]
    assert chain_groups(3, mass_dim=MAX_VECTORISED_DIM) == [2, 1]
    assert chain_groups(4, mass_dim=MAX_VECTORISED_DIM + 1) == [1, 1, 1, 1]
    assert chain_groups(4, mass_dim=201) == [1, 1, 1, 1]


def wide_data(arms: int = 30, users: int = 20) -> pl.DataFrame:
    rng = np.random.default_rng(5)
    return pl.DataFrame([(f"v{i:02d}", int(c)) for i in range(arms) for c in rng.poisson(2.0, users)],
                        orient="row", schema=["variant", "cv_count"])


def test_sampling_stops_at_its_time_limit_and_the_next_fit_runs(article_data, small_config):
    slow = SamplerConfig(num_chains=4, num_warmup=5000, num_samples=20000, seed=3, progress_bar=False, time_limit_s=2)
    started = time.monotonic()
    with pytest.raises(FitTimeout, match=r"did not finish within its time limit of 2 s \(30 variants"):
        fit(wide_data(), "v00", FitConfig(sampler=slow))
    # the program is built before the clock starts; after that it stops within a chunk of draws
    assert time.monotonic() - started < 120
    assert fit(article_data, "CG", small_config).lift.height == 1


def test_a_fit_cancelled_from_another_thread_stops_and_later_fits_run(article_data, small_config):
    slow = SamplerConfig(num_chains=4, num_warmup=5000, num_samples=20000, seed=4, progress_bar=False)
    outcome = {}

    def run():
        try:
            fit(wide_data(), "v00", FitConfig(sampler=slow))
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(3)
    cancel_running()
    worker.join(timeout=120)
    assert not worker.is_alive()
    assert isinstance(outcome.get("error"), FitCancelled)
    assert fit(article_data, "CG", small_config).lift.height == 1  # a cancel stops the fits running then, only


def test_a_time_limit_must_be_positive():
    with pytest.raises(ValueError, match="time_limit_s"):
        FitConfig(sampler=SamplerConfig(time_limit_s=0))
