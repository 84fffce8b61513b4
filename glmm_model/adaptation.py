"""NUTS warmup (Stan's windowed adaptation) whose length and target acceptance are run-time inputs.

NumPyro's ``warmup_adapter`` builds its window schedule in Python from ``num_warmup``
and closes over ``target_accept_prob``: both are fixed when the sampler is traced, so
every warmup length, and every refit (which raises the target and lengthens warmup),
was a program of its own (~20 s of compiling each on a fresh machine). Here the
schedule is computed in Python as NumPyro computes it (:func:`adaptation_schedule`),
padded to :data:`MAX_WINDOWS` rows and passed to the program as data, with the
warmup length and the target. :func:`update_fn` is NumPyro's ``warmup_adapter``
update, step for step (dual averaging of the step size towards the target; the mass
matrix estimated with Welford's algorithm in the middle windows and set at each one's
end), reading those inputs instead of constants; so the draws are NumPyro's. The
kernel's initial adaptation state is NumPyro's own (its ``init_kernel``), which does
not depend on the warmup length.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

# windows of Stan's schedule: a start buffer, slow windows doubling in length, an end buffer;
# 2**30 warmup iterations need 26
MAX_WINDOWS = 32


class WarmupInputs(NamedTuple):
    """A sampler program's warmup, as arrays (see :func:`warmup_inputs`)."""

    num_warmup: np.ndarray  # int32 scalar
    target_accept: np.ndarray  # float scalar
    schedule: np.ndarray  # int32 (MAX_WINDOWS, 2): each window's first and last iteration; -1 past the last
    num_windows: np.ndarray  # int32 scalar


def adaptation_schedule(num_steps: int) -> list[tuple[int, int]]:
    """Stan's windows (first and last iteration of each), as NumPyro's ``build_adaptation_schedule``
    draws them (a test holds the two equal); here so that a loaded program runs without NumPyro."""
    if num_steps < 20:
        return [(0, num_steps - 1)]
    start_buffer, end_buffer, init_window = 75, 50, 25
    if start_buffer + end_buffer + init_window > num_steps:
        start_buffer, end_buffer = int(0.15 * num_steps), int(0.1 * num_steps)
        init_window = num_steps - start_buffer - end_buffer
    windows = [(0, start_buffer - 1)]
    end_window_start = num_steps - end_buffer
    next_size, next_start = init_window, start_buffer
    while next_start < end_window_start:
        start, size = next_start, next_size
        if 3 * size <= end_window_start - start:  # slow windows grow monotonically
            next_size = 2 * size
        else:
            size = end_window_start - start
        next_start = start + size
        windows.append((start, next_start - 1))
    windows.append((end_window_start, num_steps - 1))
    return windows


def warmup_inputs(num_warmup: int, target_accept: float) -> WarmupInputs:
    """The inputs for ``num_warmup`` iterations of warmup towards acceptance ``target_accept``."""
    windows = adaptation_schedule(int(num_warmup))
    if len(windows) > MAX_WINDOWS:
        raise ValueError(f"num_warmup={num_warmup} needs {len(windows)} adaptation windows; at most {MAX_WINDOWS}")
    schedule = np.full((MAX_WINDOWS, 2), -1, dtype=np.int32)
    schedule[: len(windows)] = np.asarray(windows, dtype=np.int32)
    return WarmupInputs(np.int32(num_warmup), np.float64(target_accept), schedule, np.int32(len(windows)))


def update_fn(warmup: WarmupInputs, dense_mass):
    """NumPyro's ``warmup_adapter(...)[1]`` (step size and mass matrix adapted, the mass matrix
    regularised, no step-size search) with ``warmup``'s values read at run time."""
    import jax.numpy as jnp
    from jax import random
    from numpyro.infer.hmc_util import dual_averaging, welford_covariance
    from numpyro.util import cond, identity

    ss_init, ss_update = dual_averaging()
    mm_init, mm_update, mm_final = welford_covariance(diagonal=not dense_mass)
    num_warmup, target_accept, schedule, num_windows = (jnp.asarray(a) for a in warmup)

    def update_at_window_end(z_info, rng_key_ss, state):
        inverse_mass_matrix, mass_matrix_sqrt, mass_matrix_sqrt_inv = mm_final(state.mm_state, regularize=True)
        if isinstance(inverse_mass_matrix, dict):
            size = {k: v.shape for k, v in inverse_mass_matrix.items()}
        else:
            size = inverse_mass_matrix.shape[-1]
        return state._replace(  # no step-size search: the step size as it is
            inverse_mass_matrix=inverse_mass_matrix, mass_matrix_sqrt=mass_matrix_sqrt,
            mass_matrix_sqrt_inv=mass_matrix_sqrt_inv, mm_state=mm_init(size),
            ss_state=ss_init(jnp.log(10) + jnp.log(state.step_size)))

    def update(t, accept_prob, z_info, state):
        rng_key, rng_key_ss = random.split(state.rng_key)
        ss_state = ss_update(target_accept - accept_prob, state.ss_state)
        # at the end of warmup, the average of log step size
        log_step_size, log_step_size_avg, *_ = ss_state
        step_size = jnp.where(t == (num_warmup - 1), jnp.exp(log_step_size_avg), jnp.exp(log_step_size))
        finfo = jnp.finfo(jnp.result_type(step_size))
        step_size = jnp.clip(step_size, finfo.tiny, finfo.max)
        window_idx = state.window_idx
        is_middle_window = (0 < window_idx) & (window_idx < (num_windows - 1))
        mm_state = cond(is_middle_window, (z_info[0], state.mm_state), lambda args: mm_update(*args), state.mm_state,
                        identity)
        t_at_window_end = t == schedule[window_idx, 1]
        state = state._replace(step_size=step_size, ss_state=ss_state, mm_state=mm_state, rng_key=rng_key,
                               window_idx=jnp.where(t_at_window_end, window_idx + 1, window_idx))
        return cond(t_at_window_end & is_middle_window, (z_info, rng_key_ss, state),
                    lambda args: update_at_window_end(*args), state, identity)

    return update
