"""The source article's three pictures as PNGs, drawn from a fit's result tables (never by refitting).

1. ``trace.png`` — ArviZ trace plot of beta0, beta and s (the thinned draws of
   ``posterior_draws``, per chain).
2. ``user_predictive.png`` — for 10 sample users, the posterior predictive
   distribution of their count with the observed count marked (red dashed line).
3. ``rate_density.png`` — density of the estimated per-user rate mu in each arm
   (the article's TG/CG plot).

All three are drawn from the fit's ``posterior_draws``, ``user_predictive`` and
``rate_density`` tables (:mod:`.pictures`), the same rows the warehouse and the
dashboard get: whoever holds a fit's tables (the CLI, the nightly flow after its
fits came back from the task runner) can draw them, and a picture that fails
never loses the fit.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import arviz as az  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

PICTURES = ("trace", "user_predictive", "rate_density")


def trace_data(draws: pl.DataFrame):
    """``posterior_draws`` rows (parameter, variant, chain, draw, value) as ArviZ ``InferenceData``."""

    def grid(rows: pl.DataFrame) -> np.ndarray:  # (chain, draw)
        rows = rows.sort("chain", "draw")
        return rows["value"].to_numpy().reshape(rows["chain"].n_unique(), -1)

    beta = draws.filter(pl.col("parameter") == "beta")
    variants = beta["variant"].unique(maintain_order=True).to_list()
    posterior = {
        "beta0": grid(draws.filter(pl.col("parameter") == "beta0")),
        "beta": np.stack([grid(beta.filter(pl.col("variant") == v)) for v in variants], axis=-1),
    }
    s = draws.filter(pl.col("parameter") == "s")
    if s.height:  # a conversion metric has no s
        posterior["s"] = grid(s)
    return az.from_dict(posterior=posterior, coords={"variant": variants}, dims={"beta": ["variant"]})


def plot_trace(draws: pl.DataFrame, path: Path) -> None:
    data = trace_data(draws)
    axes = az.plot_trace(data, var_names=[v for v in ("beta0", "beta", "s") if v in data.posterior], compact=True)
    axes.ravel()[0].figure.tight_layout()
    axes.ravel()[0].figure.savefig(path, dpi=100)
    plt.close("all")


def plot_user_predictive(table: pl.DataFrame, path: Path) -> None:
    """Bars of each sampled user's binned predictive distribution; observed count dashed red."""
    users = table.partition_by("sample_user", maintain_order=True)
    fig, axes = plt.subplots(len(users), 1, figsize=(8, 1.6 * len(users)), squeeze=False)
    for ax, user in zip(axes[:, 0], users):
        low, high = user["count_low"].to_numpy(), user["count_high"].to_numpy()
        ax.bar(low, user["probability"].to_numpy(), width=high - low + 1, align="edge", alpha=0.6)
        observed = user["observed_count"][0]
        ax.axvline(observed + 0.5, color="r", linestyle="dashed")
        ax.set_title(f"User {user['user_label'][0]} ({user['variant'][0]}), observed {observed}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_rate_density(table: pl.DataFrame, path: Path) -> None:
    """Filled density of the estimated per-user rate per arm (the article's TG/CG plot)."""
    fig, ax = plt.subplots(figsize=(10, 6))
    for arm in table.partition_by("variant", maintain_order=True):
        centre = ((arm["rate_low"] + arm["rate_high"]) / 2).to_numpy()
        label = f"{arm['variant'][0]} (control)" if arm["is_control"][0] else arm["variant"][0]
        ax.fill_between(centre, arm["density"].to_numpy(), alpha=0.4, step="mid", label=label)
    ax.set_title("Estimated per-user rate by arm")
    ax.set_xlabel("Estimated conversions per user (per unit exposure)")
    ax.set_ylabel("Density")
    ax.legend()
    ax.grid()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(tables, directory) -> dict[str, str]:
    """Write the three pictures into ``directory`` from one fit's result tables; return name -> path.

    ``tables``: name -> frame, as :meth:`glmm_model.FitResult.tables` returns them
    (extra key columns such as ``experiment_id`` are ignored).
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / f"{name}.png" for name in PICTURES}
    plot_trace(tables["posterior_draws"], paths["trace"])
    plot_user_predictive(tables["user_predictive"], paths["user_predictive"])
    plot_rate_density(tables["rate_density"], paths["rate_density"])
    return {k: str(v) for k, v in paths.items()}
