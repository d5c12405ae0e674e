"""Process lifetime of the local executor: its forkserver and pool workers die with the run that started them,
however the run ends (kill -9 included), instead of living on with parent 1.

Linux: each process asks the kernel for SIGKILL when its parent dies (`prctl(PR_SET_PDEATHSIG)`): the forkserver
(importing `oodml.runner.forkserver` as a preload) dies with the run, the workers with the forkserver. Elsewhere
this is a no-op.
"""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1
#: the run's pid, for the forkserver to check that its parent is still that run
RUN_PID_ENV = "OODML_RUN_PID"


def die_with_parent(expected_parent: int | None = None) -> bool:
    """Have the kernel kill this process when its parent dies; exit now when the parent is already gone (or is
    not `expected_parent`). Returns False where the kernel offers no such request."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return False
    parent = os.getppid()
    if parent == 1 or (expected_parent is not None and parent != expected_parent):
        os._exit(1)
    return True


def mark_run() -> None:
    """Record this process as the run that the forkserver it starts must die with."""
    os.environ[RUN_PID_ENV] = str(os.getpid())
