"""The covariate's Laplace step (``covariate_sd_ratio``): analytic gradients against the numerical ones it replaced.

    python tests/benchmarks/covariate_laplace.py [--users 300,2000,20000] [--repeats 5]

Every fit of a count metric with pre-period data also reports how much the covariate narrowed
beta (:func:`glmm_model.covariate_gain.covariate_sd_ratio`): two Laplace approximations, with and
without the covariate, each a mode and a Hessian of the collapsed log posterior. Side by side on
the same NUTS draws (2 chains x (300 + 500)) for simulated populations of each size (the
issue's: effect x1.1, s 0.8, pre-period drift 0.3, 10% new users):

* **numerical** (what the fits did before): BFGS on the log posterior's values, its gradient by
  scipy's finite differences in raw theta, the Hessian by central differences of values
  (4 evaluations per entry);
* **analytic** (what they do now): BFGS in theta standardised by NUTS's sds on the analytic
  gradient, the Hessian by central differences of that gradient.

Prints each one's median seconds over ``--repeats`` calls, the log posterior evaluations it
made, and the ratio each returns (they should agree to many digits).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy import optimize

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from glmm_model import FitConfig, SamplerConfig, configure  # noqa: E402
from glmm_model import covariate_gain  # noqa: E402
from glmm_model.data import prepare  # noqa: E402
from glmm_model.model_inputs import prior_arrays  # noqa: E402
from glmm_model.sampling import sample  # noqa: E402
from glmm_model.simulate import with_pre_period  # noqa: E402

CALLS = 0


def counted(function):
    def wrapper(*args, **kwargs):
        global CALLS
        CALLS += 1
        return function(*args, **kwargs)
    return wrapper


def numerical_beta_sd(data, prior, start, scale, with_covariate):
    """The replaced method: value-only BFGS in raw theta, Hessian of values (steps 0.1 x scale)."""
    def neg(theta):
        return -covariate_gain._log_posterior(theta, data, prior, with_covariate)[0]

    mode = optimize.minimize(neg, start, method="BFGS", options={"gtol": 1e-6}).x
    d, step = len(mode), 0.1 * scale
    hessian = np.empty((d, d))
    for i in range(d):
        for j in range(i, d):
            total = 0.0
            for si, sj, sign in ((1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1)):
                x = mode.copy()
                x[i] += si * step[i]
                x[j] += sj * step[j]
                total += sign * neg(x)
            hessian[i, j] = hessian[j, i] = total / (4.0 * step[i] * step[j])
    return np.sqrt(np.diag(np.linalg.inv(hessian))[1:data.num_arms])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", default="300,2000,20000")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    configure()
    global CALLS
    analytic = covariate_gain.laplace_beta_sd
    covariate_gain._log_posterior = counted(covariate_gain._log_posterior)
    config = FitConfig().with_(sampler=SamplerConfig(num_chains=2, num_warmup=300, num_samples=500,
                                                     progress_bar=False))
    print("| users | cells | numerical (s) | evaluations | analytic (s) | evaluations | speed-up | ratio, numerical | ratio, analytic |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in (int(u) for u in args.users.split(",")):
        data, _ = with_pre_period(n, 3.0, [0.0, np.log(1.1)], 0.8, 0.3, seed=11, no_history_share=0.1,
                                  no_history_shift=-0.5)
        exp = prepare(data, "v0", covariate=True)
        prior = prior_arrays(config.priors, exp, "count")
        draws = sample(exp, config).draws
        row = []
        for method in (numerical_beta_sd, analytic):
            covariate_gain.laplace_beta_sd = method
            seconds = []
            for _ in range(args.repeats):
                CALLS = 0
                started = time.perf_counter()
                ratio = covariate_gain.covariate_sd_ratio(exp, prior, draws)
                seconds.append(time.perf_counter() - started)
            row.append((statistics.median(seconds), CALLS, ratio))
        covariate_gain.laplace_beta_sd = analytic
        (t_num, n_num, r_num), (t_an, n_an, r_an) = row
        print(f"| {n:,} | {exp.n_cells} | {t_num:.3f} | {n_num} | {t_an:.3f} | {n_an} | {t_num / t_an:.1f}x "
              f"| {r_num:.6f} | {r_an:.6f} |")
    print(f"\nmedian of {args.repeats} calls each; both with and without the covariate (two Laplace "
          "approximations per call).")


if __name__ == "__main__":
    main()
