"""Process-wide JAX set-up: one explicit call, made by entry points and task-runner workers.

Importing :mod:`glmm_model` changes nothing in the process. :func:`configure`
does what the engine needs of JAX, once per process:

* 64-bit floats (``jax_enable_x64``): the collapsed likelihood sums thousands of
  quadrature terms, and float32 costs digits in the posterior tails;
* the persistent compilation cache in ``$GLMM_AB_JAX_CACHE`` (default
  ``~/.cache/glmm-ab/jax``), where the exported sampler programs also live
  (:mod:`.programs`), so a later process neither traces nor compiles them.

The CLI, the nightly flow and each of its task-runner workers call it at their
start. :func:`glmm_model.fit` calls :func:`ensure_configured` before sampling, so a
library user who never calls it still gets 64-bit fits with the default cache.
"""
from __future__ import annotations

import os

from .programs import cache_dir

_configured: str | None = None


def configure(cache: str | os.PathLike | None = None) -> str:
    """Set JAX up for glmm-ab in this process; returns the cache folder. Idempotent.

    ``cache`` defaults to ``$GLMM_AB_JAX_CACHE`` or ``~/.cache/glmm-ab/jax``; it is
    written back to ``$GLMM_AB_JAX_CACHE`` so child processes and exported programs
    use the same folder. Call it before any JAX array is made.
    """
    global _configured
    import jax

    path = str(cache or cache_dir())
    os.makedirs(path, exist_ok=True)
    os.environ["GLMM_AB_JAX_CACHE"] = path
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _configured = path
    return path


def ensure_configured() -> str:
    """:func:`configure` with the defaults unless this process already called it."""
    return _configured or configure()


def is_configured() -> bool:
    return _configured is not None
