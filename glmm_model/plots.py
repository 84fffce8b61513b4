"""The source article's three pictures, drawn from a fit result (never by refitting).

1. ``trace.png`` — ArviZ trace plot of beta0, beta and s.
2. ``user_predictive.png`` — for the first 10 users, the posterior predictive
   distribution of their count with the observed count marked (red dashed line).
   Histogram input (the nightly flow) has no user order: 10 users spread over
   each arm's count distribution are shown instead.
3. ``rate_density.png`` — density of the estimated per-user rate mu in each arm
   (the article's TG/CG plot): the users' rate posteriors pooled per arm.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import arviz as az  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from .predictive import quantile_cells  # noqa: E402

_USERS = 10
_DRAWS = 4000


def arm_rate_samples(result, arm: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Unweighted draws of the rate of a random user of one arm (mixture over its cells)."""
    data, rates = result.data, result.rates
    cells = np.flatnonzero(data.cell_arm == arm)
    pick = rng.choice(cells, size=size, p=data.cell_users[cells] / data.cell_users[cells].sum())
    out = np.empty(size)
    for c in np.unique(pick):
        where = pick == c
        out[where] = rates.resample(c, int(where.sum()), rng)
    return out


def _quantile_points(k: int) -> np.ndarray:
    return (np.arange(k) + 0.5) / k


def sample_user_cells(data, n_users: int) -> np.ndarray:
    """Cells of ``n_users`` users: per arm, those at evenly spaced quantiles of the arm's counts."""
    probs = _quantile_points(max(n_users // data.num_arms, 1))
    cells = [quantile_cells(data, np.flatnonzero(data.cell_arm == arm), probs) for arm in range(data.num_arms)]
    return np.concatenate(cells)[:n_users]


def plot_trace(result, path: Path) -> None:
    axes = az.plot_trace(result.idata, var_names=["beta0", "beta", "s"], compact=True)
    axes.ravel()[0].figure.tight_layout()
    axes.ravel()[0].figure.savefig(path, dpi=100)
    plt.close("all")


def plot_user_predictive(result, path: Path, rng: np.random.Generator) -> None:
    data = result.data
    if data.user_cell is not None:
        cells = data.user_cell[:_USERS]
        labels = data.user_ids[:_USERS] if data.user_ids is not None else np.arange(len(cells))
    else:  # histogram input has no user order: users at evenly spaced count quantiles of each arm
        cells = sample_user_cells(data, _USERS)
        labels = [f"at count quantile {q:.0%}" for c, q in
                  zip(cells, np.tile(_quantile_points(_USERS // data.num_arms or 1), data.num_arms))]
    fig, axes = plt.subplots(len(cells), 1, figsize=(8, 1.6 * len(cells)), squeeze=False)
    for ax, c, label in zip(axes[:, 0], cells, labels):
        y_rep = rng.poisson(result.rates.resample(int(c), _DRAWS, rng))
        az.plot_dist(y_rep, ax=ax)
        ax.axvline(data.cell_count[c], color="r", linestyle="dashed")
        ax.set_title(f"User {label} ({data.variants[data.cell_arm[c]]}), observed {data.cell_count[c]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_rate_density(result, path: Path, rng: np.random.Generator) -> None:
    fig, ax = plt.subplots(figsize=(10, 6))
    variants = result.data.variants
    draws = [arm_rate_samples(result, arm, _DRAWS * 5, rng) for arm in range(len(variants))]
    grid = np.linspace(0, max(np.quantile(d, 0.995) for d in draws), 400)
    for arm, (variant, d) in enumerate(zip(variants, draws)):
        density = stats.gaussian_kde(d)(grid) if np.ptp(d) > 0 else np.zeros_like(grid)
        ax.fill_between(grid, density, alpha=0.4, label=f"{variant} (control)" if arm == 0 else variant)
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
    rng = np.random.default_rng(result.config.sampler.seed)
    paths = {name: out / f"{name}.png" for name in ("trace", "user_predictive", "rate_density")}
    plot_trace(result, paths["trace"])
    plot_user_predictive(result, paths["user_predictive"], rng)
    plot_rate_density(result, paths["rate_density"], rng)
    return {k: str(v) for k, v in paths.items()}
