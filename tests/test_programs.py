"""Exported sampler programs: a new process loads them instead of tracing NumPyro, and gets the same draws."""
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path


from glmm_model.programs import program_key

FIT_IN_A_PROCESS = r"""
import json, sys
from tests.conftest import SMALL, article_frame
from glmm_model import FitConfig, configure, fit
configure()
result = fit(article_frame(), "CG", FitConfig(sampler=SMALL))
print(json.dumps({"means": result.posterior_summary["mean"].to_list(),
                  "numpyro_imported": "numpyro" in sys.modules, "arviz_imported": "arviz" in sys.modules}))
"""


def _start(cache: Path) -> subprocess.Popen:
    env = {**os.environ, "GLMM_AB_JAX_CACHE": str(cache)}
    return subprocess.Popen([sys.executable, "-c", FIT_IN_A_PROCESS], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=Path(__file__).resolve().parents[1])


def _result(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _fit(cache: Path) -> dict:
    return _result(_start(cache))


def test_a_program_is_built_once_and_other_processes_load_it_without_numpyro(tmp_path):
    """Two processes that need the same program at once on an empty cache (Dask workers, two jobs): one
    traces it while the other waits for it, then loads it."""
    cache = tmp_path / "cache"
    together = [_result(p) for p in [_start(cache), _start(cache)]]
    files = sorted((cache / "programs").glob("nuts-collapsed_model-*.jax"))
    assert len(files) == 1  # two groups of two chains share one program
    assert sorted(r["numpyro_imported"] for r in together) == [False, True], "one traces, the other loads"
    first = next(r for r in together if r["numpyro_imported"])
    second = next(r for r in together if not r["numpyro_imported"])
    assert not second["arviz_imported"]
    assert second["means"] == first["means"]

    files[0].write_bytes(files[0].read_bytes()[:100])  # truncated, as by a full disk
    third = _fit(cache)
    assert third["means"] == first["means"]
    assert files[0].stat().st_size > 1000  # rebuilt and saved whole


def test_key_changes_with_shapes_and_settings():
    import numpy as np

    data = ({"x": np.zeros(8)},)
    base = program_key("p", {"warmup": 500}, data)
    assert program_key("p", {"warmup": 500}, data) == base
    assert program_key("p", {"warmup": 400}, data) != base
    assert program_key("p", {"warmup": 500}, ({"x": np.zeros(12)},)) != base
    assert program_key("p", {"warmup": 500}, ({"x": np.zeros(8, np.int32)},)) != base


def users(n: int, rate: float, arms: str, spread: float = 0.5):
    """n users of ``arms`` (one letter each) with Poisson counts of mean rate x Gamma(1 / spread, spread)."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(n)
    return pl.DataFrame({"user_id": [f"u{i}" for i in range(n)], "variant": rng.choice(list(arms), n),
                         "cv_count": rng.poisson(rate * rng.gamma(1.0 / spread, spread, n))})


def test_a_long_lived_process_holds_a_bounded_number_of_programs(monkeypatch):
    """Each loaded NUTS program maps ~1,500 memory regions (XLA:CPU's JIT-linked kernels) and Linux
    allows 65,530 per process: the test suite's own process aborted inside XLA after ~40 programs.
    Past MAX_LOADED the least recently used program is dropped, and its memory maps go with it."""
    from glmm_model import FitConfig, SamplerConfig, fit, programs

    def maps() -> int:
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)

    config = FitConfig(sampler=SamplerConfig(num_chains=2, num_warmup=50, num_samples=50, progress_bar=False))
    monkeypatch.setattr(programs, "MAX_LOADED", 1)
    # none held yet: this process's earlier tests may hold both programs, and a program already held is
    # not loaded again (nothing to drop)
    monkeypatch.setattr(programs, "_loaded", type(programs._loaded)())
    fit(users(60, 1.0, "AB"), "A", config)
    one = maps()
    fit(users(900, 9.0, "ABC"), "A", config)  # another number of arms: another program
    assert len(programs._loaded) == 1
    assert maps() - one < 500, (one, maps())  # held, the first program would have added ~1,500


def test_experiments_of_one_family_share_one_program(tmp_path, monkeypatch):
    """The program depends on the cells' capacity, not on how the cells split into count tiers:
    60 users with counts 0-8 and 2,000 users with counts up to ~100 (every tier, other sizes)
    are one program, and so is a refit's longer warmup and higher target acceptance; a third arm
    is another."""
    from glmm_model import FitConfig, SamplerConfig, fit, model_inputs, programs, quadrature
    from glmm_model.data import prepare

    monkeypatch.setenv("GLMM_AB_JAX_CACHE", str(tmp_path))
    monkeypatch.setattr(programs, "_loaded", type(programs._loaded)())

    small, large = users(60, 1.0, "AB", spread=1.0), users(2000, 20.0, "AB", spread=1.0)
    tiers = [[int(mask.sum()) for mask, _ in quadrature.tier_masks(
        prepare(frame, "A").cell_count)] for frame in (small, large)]
    assert tiers[0] != tiers[1] and min(tiers[1]) > 0, tiers
    assert {model_inputs.cells(prepare(f, "A")).arm.shape for f in (small, large)} == {(model_inputs.cell_capacity(1),)}
    config = FitConfig(sampler=SamplerConfig(num_chains=2, num_warmup=30, num_samples=30, progress_bar=False,
                                             divergence_refits=()))
    for frame in (small, large):
        fit(frame, "A", config)
    [program] = (tmp_path / "programs").glob("nuts-collapsed_model-*.jax")
    spec = json.loads(program.with_suffix(".json").read_text())  # what it was built for, beside it
    assert spec["settings"]["num_chains"] == 2 and "num_warmup" not in spec["settings"]
    assert [model_inputs.cell_capacity(1)] in [shape for shape, _ in spec["leaves"]]
    refit = replace(config.sampler, num_warmup=60, target_accept=0.95)  # what a refit after divergences runs
    assert fit(small, "A", replace(config, sampler=refit)).diagnostics["num_warmup"][0] == 60
    assert list((tmp_path / "programs").glob("nuts-collapsed_model-*.jax")) == [program]
    fit(users(300, 1.0, "ABC", spread=1.0), "A", config)
    assert len(list((tmp_path / "programs").glob("nuts-collapsed_model-*.jax"))) == 2
