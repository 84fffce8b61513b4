"""Stopping a run on SIGTERM or Ctrl-C: cleanly, within seconds, with a 'failed' glmm.runs row.

A supervisor (systemd, a container runtime, Kubernetes, `kill`) asks a job to stop
with SIGTERM and kills it a little later. On the first SIGTERM or SIGINT,
:func:`install`'s handler

* marks the stop as requested (:func:`requested`), which the flow checks between its
  stages and turns into :class:`RunStopped` where it records a failed run;
* cancels the fits sampling in this process (:func:`glmm_model.cancel_running`: they
  stop within one chunk of draws, as ``FitCancelled``);
* cancels the queries of the dbt build this process runs, if any (:func:`on_stop`).

Outside a flow (waiting for another run's lock) it raises :class:`RunStopped` at
once: there is nothing to record. A second signal ends the process at once with
128 + the signal's number, for a person who will not wait.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager

_requested: int | None = None  # the signal that asked for the stop
_in_flow = False
_actions: set = set()  # what else to do on a stop (cancel dbt's queries)
_actions_lock = threading.Lock()


class RunStopped(Exception):
    """The run was asked to stop (SIGTERM or SIGINT); ``signum`` says which."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def requested() -> bool:
    return _requested is not None


def signal_number() -> int | None:
    return _requested


def check() -> None:
    """Raise :class:`RunStopped` if a stop was requested."""
    if _requested is not None:
        raise RunStopped(_requested)


def _handle(signum, frame) -> None:
    global _requested
    if _requested is not None:  # asked twice: stop now
        sys.stderr.write(f"glmm-ab: {signal.Signals(signum).name} again: exiting now\n")
        sys.stderr.flush()
        os._exit(128 + signum)
    _requested = signum
    sys.stderr.write(f"glmm-ab: {signal.Signals(signum).name} received: stopping the run (send it again to exit now)\n")
    sys.stderr.flush()
    from glmm_model import cancel_running

    cancel_running()
    with _actions_lock:
        actions = list(_actions)
    for action in actions:
        action()
    if not _in_flow:
        raise RunStopped(signum)


def install() -> None:
    """Handle SIGTERM and SIGINT as described above (main thread only, as Python requires)."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _handle)


def reinstall_in_flow() -> None:
    """Called at the start of the flow's body: Prefect's flow engine swaps in its own SIGTERM handler
    for the flow's duration (it raises a BaseException wherever the main thread is, which leaves the
    fit threads running and the run unrecorded). Where the CLI manages stopping, ours goes back; the
    engine restores whatever was there before when the flow ends."""
    if _in_flow:
        install()


@contextmanager
def in_flow():
    """Inside the block a signal is only noted: the flow stops at its next check and records why."""
    global _in_flow
    previous, _in_flow = _in_flow, True
    try:
        yield
    finally:
        _in_flow = previous


@contextmanager
def on_stop(action):
    """Within the block a stop calls ``action()`` (at once if one was already requested)."""
    with _actions_lock:
        _actions.add(action)
    try:
        if _requested is not None:
            action()
        yield
    finally:
        with _actions_lock:
            _actions.discard(action)
