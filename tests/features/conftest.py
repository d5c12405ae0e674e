"""Every features test runs offline with a session-wide private oodml cache (tar extractions are shared)."""

from __future__ import annotations

import pytest

from tests.data.helpers import isolate


@pytest.fixture(autouse=True)
def _offline_private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate(monkeypatch, tmp_path_factory.getbasetemp() / "oodml-cache")
