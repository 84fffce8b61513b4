"""The run options, defined once: the CLI's flags, the flow's parameter, ``serve``, ``backfill``
and what ``glmm.runs.config`` records all come from :class:`RunOptions`.

This module imports only the standard library (the CLI builds its parser from it
before it knows which command runs); the engine is imported when a fit's
configuration is asked for.
"""
from __future__ import annotations

import argparse
import os
import zlib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

from .runners import check_spec


def _flag(*names: str, **argparse_kwargs) -> dict:
    return {"flags": names, "argparse": argparse_kwargs}


@dataclass(frozen=True)
class RunOptions:
    """How one nightly run analyses and publishes. Immutable; validated on creation.

    The statistical settings (method to seed, exposure) name the analysis and are
    recorded with every run in ``glmm.runs.config``; the output settings (plots,
    publishing) say where things go.
    """

    method: Literal["collapsed", "latent"] = field(default="collapsed", metadata=_flag(
        "--method", choices=["collapsed", "latent"], help="collapsed (default; cost flat in users) or latent"))
    priors: Literal["default", "article"] = field(default="default", metadata=_flag(
        "--priors", choices=["default", "article"], help="prior preset (default: scaled to the data)"))
    num_chains: int = field(default=4, metadata=_flag("--chains", type=int, help="NUTS chains (default 4)"))
    num_warmup: int = field(default=500, metadata=_flag("--warmup", type=int, help="warmup draws per chain (default 500)"))
    num_samples: int = field(default=2000, metadata=_flag("--samples", type=int, help="kept draws per chain (default 2000)"))
    seed: int = field(default=42, metadata=_flag("--seed", type=int, help="base seed; each pair derives its own (default 42)"))
    refits: int = field(default=2, metadata=_flag(
        "--refits", type=int, help="refits of a fit with divergent transitions, each with smaller steps and a longer "
                                   "warmup (0-2, default 2)"))
    use_covariate: bool = field(default=True, metadata=_flag(
        "--no-covariate", action="store_false",
        help="ignore the pre-period count (pre_cv_count) instead of adjusting for it (the default adjusts: "
             "narrower intervals when users' history predicts their counts)"))
    use_exposure: bool = field(default=False, metadata=_flag(
        "--exposure", action="store_true", help="use exposure days as a log offset (rates per day)"))
    segments: bool = field(default=True, metadata=_flag(
        "--no-segments", action="store_false",
        help="skip the segment breakdowns (by default each experiment x primary metric x dimension of "
             "raw.user_segments costs one more fit; the pairs' own results do not change)"))
    fit_timeout: float = field(default=900.0, metadata=_flag(
        "--fit-timeout", type=float, metavar="SECONDS",
        help="stop a pair's sampling after this long and record the pair in glmm.fit_failures; 0 = no limit (default 900)"))
    plots_dir: str | None = field(default=None, metadata=_flag(
        "--plots-dir", help="write each pair's three pictures under DIR/<run_id>/"))
    publish_to: str | None = field(default=None, metadata=_flag(
        "--publish-to", help="BI-facing DuckDB copy (default $GLMM_AB_BI_PATH or <warehouse stem>_bi.duckdb beside it)"))
    parquet_dir: str | None = field(default=None, metadata=_flag(
        "--parquet-dir", help="Parquet copy of the same tables (default <bi stem>_parquet/)"))
    publish_results: bool = field(default=True, metadata=_flag(
        "--no-publish", action="store_false", help="do not publish the BI copy"))
    publish_per_user: bool = field(default=False, metadata=_flag(
        "--publish-per-user", action="store_true",
        help="also copy the per-user table fct_user_cv_counts to the BI copy (one row per experiment x metric x "
             "user: the largest table by far; BI reads the histogram and the reports)"))
    full_refresh: bool = field(default=False, metadata=_flag(
        "--full-refresh", action="store_true",
        help="recount every user from the whole raw log (dbt's --full-refresh of the incremental per-user counts): "
             "after raw rows landed later than var('late_data_lookback_days') or were corrected or deleted"))
    reuse_fits: bool = field(default=True, metadata=_flag(
        "--refit-all", action="store_false",
        help="fit every pair; by default a pair whose histogram, settings and engine are those of its last fit "
             "reuses that fit's results (a refit would give the same draws: the same inputs and seed), recorded "
             "in glmm.fit_inputs"))
    task_runner: str = field(default="sequential", metadata=_flag(
        "--task-runner", metavar="sequential|dask|dask://HOST:PORT",
        help="where the fits run: in this process one after another (default), on a Dask cluster started for the "
             "run (one worker per two cores), or on an existing Dask scheduler; results are the same"))

    SAMPLING = ("method", "priors", "num_chains", "num_warmup", "num_samples", "seed", "refits", "use_covariate")
    STATISTICAL = SAMPLING + ("use_exposure",)

    def __post_init__(self) -> None:
        if self.method not in ("collapsed", "latent"):
            raise ValueError(f"method must be 'collapsed' or 'latent', got {self.method!r}")
        if self.priors not in ("default", "article"):
            raise ValueError(f"unknown prior preset {self.priors!r}: expected 'default' or 'article'")
        for name, low in (("num_chains", 1), ("num_samples", 1), ("num_warmup", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be a whole number in [0, 2**32), got {self.seed!r}")
        if not isinstance(self.use_covariate, bool):
            raise ValueError(f"use_covariate must be true or false, got {self.use_covariate!r}")
        if not isinstance(self.reuse_fits, bool):
            raise ValueError(f"reuse_fits must be true or false, got {self.reuse_fits!r}")
        if not isinstance(self.segments, bool):
            raise ValueError(f"segments must be true or false, got {self.segments!r}")
        if not isinstance(self.refits, int) or isinstance(self.refits, bool) or not 0 <= self.refits <= 2:
            raise ValueError(f"refits must be 0, 1 or 2, got {self.refits!r}")
        check_spec(self.task_runner)
        if isinstance(self.fit_timeout, bool) or not isinstance(self.fit_timeout, (int, float)) or not self.fit_timeout >= 0:
            raise ValueError(f"fit_timeout must be a number of seconds >= 0 (0: no limit), got {self.fit_timeout!r}")

    # -- the command line -------------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None) -> None:
        """Add one flag per option (dest = the field's name); ``names`` picks a subset."""
        for f in fields(cls):
            if names is not None and f.name not in names:
                continue
            parser.add_argument(*f.metadata["flags"], dest=f.name, default=f.default, **f.metadata["argparse"])

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "RunOptions":
        """The options of parsed flags; ``--publish-to`` falls back to ``$GLMM_AB_BI_PATH``. ValueError if out of range."""
        values = {f.name: getattr(args, f.name) for f in fields(cls)}
        values["publish_to"] = values["publish_to"] or os.environ.get("GLMM_AB_BI_PATH") or None
        return cls(**values)

    # -- what the flow, serve and glmm.runs need --------------------------------------------
    def with_absolute_paths(self) -> "RunOptions":
        """Paths made absolute (a served deployment runs from another folder)."""
        paths = {k: str(Path(v).resolve()) for k in ("plots_dir", "publish_to", "parquet_dir") if (v := getattr(self, k))}
        return replace(self, **paths)

    def to_dict(self) -> dict:
        return asdict(self)

    def run_config(self) -> dict:
        """The statistical settings, as ``glmm.runs.config`` records them."""
        return {k: getattr(self, k) for k in self.STATISTICAL}

    def fit_config(self, experiment_id: str, metric_id: str, planned_split=None, metric_type: str = "count",
                   tolerated_drop: float | None = None):
        """The engine's :class:`glmm_model.FitConfig` for one pair (its own seed, no progress bar,
        the experiment's planned traffic split: None for an equal one; the metric's type and a
        guardrail's tolerated drop). A conversion metric has no per-user intercept: always 'collapsed'.
        The pre-period covariate is fitted on the collapsed path: the latent path goes without it."""
        from glmm_model import FitConfig, Priors, SamplerConfig

        return FitConfig(
            method="collapsed" if metric_type == "conversion" else self.method,
            metric_type=metric_type,
            tolerated_drop=tolerated_drop,
            covariate=self.use_covariate and (metric_type == "conversion" or self.method == "collapsed"),
            priors=Priors.from_preset(self.priors),
            sampler=SamplerConfig(num_chains=self.num_chains, num_warmup=self.num_warmup,
                                  num_samples=self.num_samples, seed=pair_seed(self.seed, experiment_id, metric_id),
                                  progress_bar=False, time_limit_s=self.fit_timeout or None,
                                  divergence_refits=SamplerConfig.divergence_refits[:self.refits]),
            planned_split=planned_split,
        )


def pair_seed(base: int, experiment_id: str, metric_id: str) -> int:
    """A fixed seed per pair: reruns give the same answer, pairs get different streams."""
    return (base + zlib.crc32(f"{experiment_id}\x1f{metric_id}".encode())) % (2**31)
