"""The source article's three pictures as PNGs, drawn from a fit result (never by refitting).

1. ``trace.png`` — ArviZ trace plot of beta0, beta and s (every draw).
2. ``user_predictive.png`` — for 10 sample users, the posterior predictive
   distribution of their count with the observed count marked (red dashed line).
3. ``rate_density.png`` — density of the estimated per-user rate mu in each arm
   (the article's TG/CG plot).

Pictures 2 and 3 are drawn from the fit's ``user_predictive`` and ``rate_density``
tables (:mod:`.pictures`), the same rows the warehouse and the dashboard get.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import arviz as az  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402


def plot_trace(result, path: Path) -> None:
    axes = az.plot_trace(result.idata, var_names=["beta0", "beta", "s"], compact=True)
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


def write_plots(result, directory) -> dict[str, str]:
    """Write the three pictures into ``directory``; return name -> path."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / f"{name}.png" for name in ("trace", "user_predictive", "rate_density")}
    plot_trace(result, paths["trace"])
    plot_user_predictive(result.user_predictive, paths["user_predictive"])
    plot_rate_density(result.rate_density, paths["rate_density"])
    return {k: str(v) for k, v in paths.items()}
