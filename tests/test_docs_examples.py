"""README.md's "Your own method / data / backbone" examples, executed as written so that they cannot rot.

The examples are bash blocks made of three kinds of steps only: `python - <<'EOF'` scripts, `cat > FILE <<'EOF'`
files and `oodml ...` commands. This test runs them in order in a temporary folder (a script with `exec`, a command
in-process through Typer's CliRunner, so that torch is imported once) and fails on any other kind of line, so a new
step cannot be skipped silently.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from oodml.cli import app
from tests.conftest import REPO

SECTION = "## Your own method / data / backbone"
ASSET = Path("oodml/data/assets/images_background_small1.zip")


def section_blocks() -> list[str]:
    """The bash blocks of the README section, in order."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return re.findall(r"```bash\n(.*?)```", text[start:end if end > 0 else None], flags=re.S)


def steps(block: str) -> Iterator[tuple[str, str, str]]:
    """(kind, argument, body) per step: ("python", "", code), ("file", path, text) or ("oodml", command line, "")."""
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line:
            continue
        heredoc = re.fullmatch(r"(python -|cat > (\S+)) <<'EOF'", line)
        if heredoc:
            end = lines.index("EOF", i)
            body = "\n".join(lines[i:end]) + "\n"
            i = end + 1
            yield ("python", "", body) if heredoc.group(2) is None else ("file", heredoc.group(2), body)
        elif line.startswith("oodml "):
            yield "oodml", line, ""
        else:
            raise AssertionError(f"README example step this test cannot run: {line!r}")


@pytest.fixture
def restore_methods() -> Iterator[None]:
    """The plugin example registers methods: remove them afterwards so that other tests see the built-in ones."""
    from oodml import methods
    from oodml.methods.base import METHODS

    entries, aliases = dict(METHODS._entries), dict(METHODS._aliases)  # noqa: SLF001
    files = dict(methods._plugin_files)  # noqa: SLF001
    yield
    METHODS._entries.clear()  # noqa: SLF001
    METHODS._entries.update(entries)  # noqa: SLF001
    METHODS._aliases.clear()  # noqa: SLF001
    METHODS._aliases.update(aliases)  # noqa: SLF001
    methods._plugin_files.clear()  # noqa: SLF001
    methods._plugin_files.update(files)  # noqa: SLF001


def test_readme_has_three_examples() -> None:
    blocks = section_blocks()
    assert len(blocks) == 3
    kinds = [[k for k, _, _ in steps(b)] for b in blocks]
    assert all("oodml" in k for k in kinds)
    assert "--plugin my_methods.py" in blocks[1] and "--backbone-weights" in blocks[2]


def test_readme_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_methods: None) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OODML_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OODML_OFFLINE", "1")
    monkeypatch.setenv("OODML_DATA", str(tmp_path / "no-data"))
    (tmp_path / ASSET).parent.mkdir(parents=True)
    (tmp_path / ASSET).symlink_to(REPO / ASSET)
    for block in section_blocks():
        for kind, arg, body in steps(block):
            if kind == "python":
                exec(compile(body, "README.md example", "exec"), {"__name__": "__main__"})  # noqa: S102
            elif kind == "file":
                Path(arg).write_text(body, encoding="utf-8")
            else:
                r = CliRunner().invoke(app, shlex.split(arg)[1:])
                assert r.exit_code == 0, f"{arg} -> {r.exit_code}: {r.output[-2000:]}"
    # the data example: a dataset named after its folder, its own split file and report folder
    assert sorted(p.name for p in (tmp_path / "splits").glob("*.json")) == ["my_photos.json", "my_photos_r18.json"]
    spec = json.loads((tmp_path / "splits" / "my_photos.json").read_text())
    assert spec["dataset"] == "my_photos" and len(spec["levels"]) == 3
    assert (tmp_path / "results" / "mine" / "my_photos" / "all.csv").is_file()
    # the method example: the plugin's two methods ran and stored ok cells
    cells = [json.loads(p.read_text()) for p in (tmp_path / "results" / "mine" / "cells").glob("*.json")]
    methods = {r["method"] for c in cells for r in c["rows"]}
    assert {"pretrained", "supcon", "adapted_supcon"} <= methods and all(c["status"] == "ok" for c in cells)
    # the backbone example: the weights file's checksum is in the features' meta
    with np.load(tmp_path / "my_photos_r18.npz", allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
    from oodml.features.backbones import weights_sha256

    assert meta["weights_sha256"] == weights_sha256(tmp_path / "my_resnet18.pth") and meta["pretrained"] is True
    assert meta["dataset"] == "my_photos_r18" and meta["backbone"] == "timm:resnet18"


def test_plugin_guide_examples_register_working_methods(restore_methods: None) -> None:
    """docs/plugins.md's Python blocks (the loss, then the miner), run in one namespace as a plugin file would."""
    import torch

    from oodml.methods import method_params
    from oodml.methods.base import METHODS
    from oodml.methods.dml import DmlMethod  # noqa: F401  (the class register_dml_loss builds)

    text = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```py(?:thon)?\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 2
    module = types.ModuleType("my_plugin_from_the_guide")  # a dataclass needs its module in sys.modules
    sys.modules[module.__name__] = module
    try:
        for block in blocks:
            exec(compile(block, "docs/plugins.md", "exec"), module.__dict__)  # noqa: S102
    finally:
        del sys.modules[module.__name__]
    namespace = module.__dict__
    assert {"circle", "adapted_circle", "mined_triplet", "adapted_mined_triplet"} <= set(METHODS.names())
    objective = namespace["mined_triplet"](namespace["TripletParams"](), 3)
    e = torch.nn.functional.normalize(torch.randn(12, 4), dim=1)
    assert torch.isfinite(objective(e, torch.arange(12) % 3)) and objective.miner is not None
    assert method_params("adapted_mined_triplet")["margin"] == 0.2
