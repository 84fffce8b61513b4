"""Compiled sampler programs kept on disk, so a new process neither traces nor compiles them.

A fit's arithmetic takes about a second; what a fresh process paid on top was
building the program: 3-4 s to trace NumPyro's NUTS kernel into a JAX program, and
more to compile it. Two layers in one project-local folder
(``$GLMM_AB_JAX_CACHE``, default ``~/.cache/glmm-ab/jax``) remove both:

* JAX's persistent compilation cache holds the compiled XLA executables;
* ``jax.export`` files (``programs/*.jax``: the traced program as StableHLO, with
  its input and output structure) replace tracing. Loading one takes ~0.02 s and
  compiling it is then a hit in the first layer.

An exported file is named by a digest of everything that changes the program:
its name and settings, the shapes and dtypes of its inputs, the versions of
jax, jaxlib and numpyro, and the source of the modules that define the model
(:mod:`.model`, :mod:`.model_inputs`, :mod:`.quadrature`, :mod:`.sampling`). A change to any of them
gives a new name; an unreadable file is rebuilt, never trusted. Files are written
to a temporary name and renamed, so a reader never sees half a file. A process about to
build a program holds a lock on it (``programs/*.lock``) while it traces, so processes
of one machine that need the same program at once (Dask workers, a second job) build it
once: the others wait, then load the file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections import OrderedDict
from contextlib import contextmanager
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable, NamedTuple

import jax

log = logging.getLogger(__name__)

_DEFINING_MODULES = ("model.py", "model_inputs.py", "quadrature.py", "sampling.py")


class Program(NamedTuple):
    """A loaded program: ``call`` (jitted) and ``arg_avals``, the shapes and dtypes of its arguments."""

    call: Callable
    arg_avals: tuple


# The programs this process holds, newest last. Each compiled NUTS program maps ~1,500 memory
# regions (XLA:CPU's JIT-linked kernels) until it is dropped, and Linux allows 65,530 per process
# (vm.max_map_count): holding every program a long-lived process ever loaded aborted it inside XLA
# after ~40. Past MAX_LOADED the least recently used one is dropped (its maps with it); needed
# again, it comes back from the persistent cache.
MAX_LOADED = 12
_loaded: OrderedDict[str, Program] = OrderedDict()


def cache_dir() -> Path:
    """The project-local cache folder: ``$GLMM_AB_JAX_CACHE`` or ``~/.cache/glmm-ab/jax``."""
    return Path(os.environ.get("GLMM_AB_JAX_CACHE") or os.path.expanduser("~/.cache/glmm-ab/jax"))


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "none"


def source_digest(modules, packages) -> str:
    """SHA-256 of the named source files of this package (in the order given) and of the installed
    versions of the named distributions ("none" for one not installed)."""
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for name in modules:
        digest.update((here / name).read_bytes())
    for package in packages:
        digest.update(f"{package}={_version(package)};".encode())
    return digest.hexdigest()


def engine_modules() -> list[str]:
    """Every source file of this package, by name."""
    return sorted(path.name for path in Path(__file__).parent.glob("*.py"))


@lru_cache(maxsize=1)
def _code_digest() -> str:
    return source_digest(_DEFINING_MODULES, ("jax", "jaxlib", "numpyro"))


def program_spec(name: str, settings: dict, data) -> dict:
    """What names one program: name, settings, data shapes/dtypes and structure, code and versions."""
    leaves, tree = jax.tree.flatten(data)
    return {
        "name": name,
        "settings": settings,
        "tree": str(tree),
        "leaves": [(tuple(int(d) for d in leaf.shape), str(leaf.dtype)) for leaf in leaves],
        "x64": bool(jax.config.jax_enable_x64),
        "code": _code_digest(),
    }


def _digest(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:24]


def program_key(name: str, settings: dict, data) -> str:
    """Digest of :func:`program_spec`: the program's file name."""
    return _digest(program_spec(name, settings, data))


def _write_atomically(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def _building(path: Path):
    """Held while this process builds the program saved at ``path``; another process building it waits
    here. An advisory lock on a file beside it, released with the file (or the process); a folder
    where the lock cannot be taken (read-only, no fcntl) builds without it."""
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.with_suffix(".lock"), "a+b")
    except (ImportError, OSError):
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _read(path: Path, warn: bool = True):
    """The exported program saved at ``path``, or None when there is none or it cannot be read."""
    from jax import export

    if not path.is_file():
        return None
    try:
        return export.deserialize(bytearray(path.read_bytes()))
    except Exception as exc:  # a truncated or foreign file: rebuild it
        if warn:
            log.warning("rebuilding unreadable exported program %s: %s", path, exc)
        return None


def _build_and_save(path: Path, spec: dict, build: Callable[[], tuple[Callable, tuple]]):
    """Trace ``build()``'s function into an exported program and save it at ``path``."""
    from jax import export

    function, example_args = build()
    exported = export.export(jax.jit(function))(*example_args)
    try:
        _write_atomically(path, exported.serialize())
        # beside it, what it was built for (settings and shapes), for whoever wonders why a cache holds it
        _write_atomically(path.with_suffix(".json"), json.dumps(spec, sort_keys=True, indent=1, default=str).encode())
    except OSError as exc:  # a read-only cache folder costs time, not results
        log.warning("could not save exported program %s: %s", path, exc)
    return exported


def load(name: str, settings: dict, data, build: Callable[[], tuple[Callable, tuple]]) -> Program:
    """A compiled program for ``settings`` and inputs shaped like ``data``.

    From this process's memory, else from its exported file, else built: ``build()``
    returns the function and example arguments (arrays or ``jax.ShapeDtypeStruct``)
    to trace it with; it is exported and saved. ``data`` (arrays) names the program
    together with ``name`` and ``settings``: everything else about its inputs must
    follow from them. Another process building the same program is waited for.
    """
    spec = program_spec(name, settings, data)
    key = _digest(spec)
    if key in _loaded:
        _loaded.move_to_end(key)
        return _loaded[key]
    path = cache_dir() / "programs" / f"{name}-{key}.jax"
    exported = _read(path)
    if exported is None:
        with _building(path):
            exported = _read(path, warn=False)  # built by another process while this one waited
            if exported is None:
                exported = _build_and_save(path, spec, build)
    arg_avals, _ = jax.tree.unflatten(exported.in_tree, exported.in_avals)
    program = Program(call=jax.jit(exported.call), arg_avals=tuple(arg_avals))
    _loaded[key] = program
    while len(_loaded) > MAX_LOADED:
        _loaded.popitem(last=False)
    return program
