"""Preloaded by the local executor's forkserver (and only there): the server dies with the run that started it
(`oodml.runner.procs`)."""

from __future__ import annotations

import os

from oodml.runner.procs import RUN_PID_ENV, die_with_parent

if os.environ.get(RUN_PID_ENV, "").isdigit():
    die_with_parent(int(os.environ[RUN_PID_ENV]))
