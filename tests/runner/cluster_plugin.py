"""`--plugin tests.runner.cluster_plugin`: `fake_gate`, a test method whose fit can be held until the test lets it
go, so that a test removes a Ray node while a known cell runs on it (tests/runner/test_ray_cluster.py).

The gate lives in the folder named by `FAKE_GATE_DIR` (unset: the method never waits). Once the file `armed` is
there, the first fit to claim `claimed` writes `waiting` (its Ray node id) and waits for `open`; every other fit,
the resubmitted one included, goes straight through. The numbers never depend on the gate.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from oodml.methods import METHODS, MethodInfo
from tests.runner.fakes import FakeParams, ProjMethod

GATE_ENV = "FAKE_GATE_DIR"


class GateMethod(ProjMethod):
    """`fake_proj` whose fit the test can hold (see the module docstring)."""

    info = MethodInfo("fake_gate", family="baseline", trains=True, uses_support=True,
                      description="waits at a gate the test opens", params=FakeParams)

    def fit(self, x: Any, y: np.ndarray, val: Any = None) -> None:
        gate = os.environ.get(GATE_ENV)
        if gate and (Path(gate) / "armed").exists() and _claim(Path(gate) / "claimed"):
            import ray

            (Path(gate) / "waiting").write_text(ray.get_runtime_context().get_node_id())
            deadline = time.monotonic() + 300
            while not (Path(gate) / "open").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        super().fit(x, y)


def _claim(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def register() -> None:
    """Add `fake_gate` to METHODS (idempotent)."""
    if GateMethod.info.name not in METHODS:
        METHODS.add(GateMethod.info, GateMethod)


def unregister() -> None:
    """Remove `fake_gate` from METHODS."""
    METHODS._entries.pop(GateMethod.info.name, None)


register()
