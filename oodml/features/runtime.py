"""Where a frozen backbone's forward pass runs: ONNX Runtime or torch (`--runtime onnx|torch|auto`).

ONNX Runtime runs the backbone exported once per (backbone, weights, torch version) with
`torch.onnx.export(..., opset_version=17, dynamo=False)`, cached under `$OODML_CACHE/onnx/` (written atomically; a
cached file that ONNX Runtime cannot load is exported again). An ONNX file is a protobuf graph: loading it runs no
code. `auto` uses ONNX Runtime when `onnxruntime` and `onnx` import and the export works, else torch (with a note).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from oodml.config import RUNTIMES  # auto, onnx, torch (stated once, in the config: `run --runtime`)
from oodml.errors import OodmlError
from oodml.features.backbones import Backbone
from oodml.io import atomic_write, cache_dir
from oodml.progress import log

ONNX_OPSET = 17
_INSTALL = "pip install onnxruntime onnx"

#: glibc serves allocations above 32 MB with fresh mmap'd pages and unmaps them on free, so a batch whose activations
#: exceed that pays page faults on every layer: Lite0 at 224 px, batch 64: 18 ms/img user + 21 ms/img sys; in chunks
#: of 4: 18 ms/img user + 0.2 ms/img sys (measured here). The torch forward pass therefore runs in chunks whose largest
#: activation (about 8x the input for these backbones) stays below that size. (ONNX Runtime keeps its own arena.)
_ACTIVATION_BUDGET = 24 * 2**20
_ACTIVATION_OVER_INPUT = 8


def forward_chunk(input_size: int, batch_size: int) -> int:
    """Images per torch forward call: at most `batch_size`, few enough to keep activations under the mmap threshold."""
    per_image = _ACTIVATION_OVER_INPUT * 3 * input_size * input_size * 4
    return max(1, min(batch_size, _ACTIVATION_BUDGET // per_image))


def check_runtime(runtime: str) -> str:
    """`runtime` if it is one of RUNTIMES, else OodmlError naming them."""
    if runtime not in RUNTIMES:
        raise OodmlError(f"--runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    return runtime


def onnx_unavailable() -> str | None:
    """Why ONNX Runtime cannot be used here (a missing package), or None when it can."""
    for package in ("onnxruntime", "onnx"):
        try:
            __import__(package)
        except ImportError as e:
            return f"{package} is not installed ({e}); {_INSTALL}"
    return None


def resolve_runtime(runtime: str) -> str:
    """`onnx` or `torch`: `auto` is `onnx` when its packages import; an explicit `onnx` without them is an error."""
    check_runtime(runtime)
    if runtime == "torch":
        return "torch"
    why = onnx_unavailable()
    if why is None:
        return "onnx"
    if runtime == "onnx":
        raise OodmlError(f"--runtime onnx: {why}")
    return "torch"


class TorchForward:
    """The backbone in torch: channels_last, inference mode, in chunks that keep activations small."""

    runtime = "torch"

    def __init__(self, backbone: Backbone, batch_size: int) -> None:
        self.model = backbone.eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.chunk = forward_chunk(backbone.input_size, batch_size)

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        """(B, 3, H, W) -> (B, D) float32."""
        outs = []
        with torch.inference_mode():
            for s in range(0, len(x), self.chunk):
                xs = x[s:s + self.chunk].contiguous(memory_format=torch.channels_last)
                outs.append(self.model(xs).float().numpy())
        return np.concatenate(outs) if outs else np.empty((0, 0), dtype=np.float32)


class OnnxForward:
    """The backbone on ONNX Runtime's CPU provider: one session, `threads` intra-op threads, full graph optimisation."""

    runtime = "onnx"

    def __init__(self, backbone: Backbone, threads: int | None = None) -> None:
        self.path = onnx_model_path(backbone)
        self.threads = threads or torch.get_num_threads()
        self.session = _load_or_export(backbone, self.path, self.threads)
        self.input_name = self.session.get_inputs()[0].name
        self._single: Any = None

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        """(B, 3, H, W) -> (B, D) float32."""
        return _run(self.session, self.input_name, x)

    def single_threaded(self) -> Callable[[torch.Tensor], np.ndarray]:
        """The same forward pass on a session of one intra-op thread, safe to call from several threads at once:
        `threads` callers each running their own batch keep the cores busier than one session's `threads` threads
        sharing each operator (and a decoding thread beside them), with the same values for every image."""
        if self._single is None:
            self._single = _session(self.path, 1)
        session = self._single
        return lambda x: _run(session, self.input_name, x)


def _run(session: Any, input_name: str, x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) -> (B, D) float32 on an ONNX Runtime session."""
    feed = np.ascontiguousarray(x.numpy(), dtype=np.float32)
    return np.asarray(session.run(None, {input_name: feed})[0], dtype=np.float32)


def make_forward(backbone: Backbone, runtime: str = "auto", *, batch_size: int = 64,
                 threads: int | None = None) -> TorchForward | OnnxForward:
    """The forward pass of `backbone` on `runtime`; `auto` falls back to torch (with one note) when ONNX fails.

    Args:
        backbone: the frozen backbone (eval mode).
        runtime: `auto`, `onnx` or `torch`.
        batch_size: images per call (sets the torch path's chunking).
        threads: ONNX Runtime intra-op threads (default: torch's thread count, the embed's thread budget).
    """
    resolved = resolve_runtime(runtime)
    if resolved == "onnx":
        try:
            return OnnxForward(backbone, threads)
        except Exception as e:  # export or session failure: any exporter/runtime exception type
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if runtime == "onnx":
                raise OodmlError(f"--runtime onnx: cannot run {backbone.name} on ONNX Runtime ({reason}); "
                                 "use --runtime torch") from None
            log(f"embed: ONNX Runtime unavailable for {backbone.name} ({reason}); using torch")
    return TorchForward(backbone, batch_size)


# --- export cache ---------------------------------------------------------------------------------------------------

def weights_hash(module: torch.nn.Module) -> str:
    """sha256 over the module's state dict (names, dtypes, shapes, bytes), in its order."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def onnx_cache_dir() -> Path:
    """Folder of exported backbones."""
    return cache_dir() / "onnx"


def onnx_model_path(backbone: Backbone) -> Path:
    """Cache path of `backbone`'s ONNX export, keyed by its name, weights hash, input size, opset and torch version."""
    text = json.dumps([backbone.name, weights_hash(backbone), backbone.input_size, ONNX_OPSET, torch.__version__])
    key = hashlib.sha256(text.encode()).hexdigest()[:20]
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", backbone.name)
    return onnx_cache_dir() / f"{safe}-{key}.onnx"


def export_onnx(backbone: Backbone, path: Path) -> Path:
    """Export `backbone` (dynamic batch) to `path` atomically (temp file in the same folder, then rename)."""
    import warnings

    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.zeros(2, 3, backbone.input_size, backbone.input_size)
    with atomic_write(path, "wb") as f:  # the exporter writes the temp file by its name
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(backbone.eval(), (x,), f.name, opset_version=ONNX_OPSET, dynamo=False,
                              input_names=["images"], output_names=["features"],
                              dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}})
    return path


def _session(path: Path, threads: int, *, spin: bool = False) -> Any:
    """An ONNX Runtime session on `path` (`spin`: idle threads busy-wait, ONNX Runtime's default; for comparisons)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, threads)
    opts.inter_op_num_threads = 1
    # no busy-waiting between ops: the spinning threads took the cores that decoding needs (embed of 256 CUB images,
    # Lite0, 2 cores: 14.5 -> 18.8 img/s with the same decoding; the bare forward pass did not get slower)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _load_or_export(backbone: Backbone, path: Path, threads: int) -> Any:
    """An ONNX Runtime session on the cached export, exporting it when absent or unloadable (corrupt, truncated)."""
    if path.is_file():
        try:
            return _checked(_session(path, threads), backbone)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
            log(f"embed: cached ONNX model {path} is unusable ({type(e).__name__}); exporting it again")
    log(f"embed: exporting {backbone.name} to ONNX ({path})")
    export_onnx(backbone, path)
    return _checked(_session(path, threads), backbone)


def _checked(session: Any, backbone: Backbone) -> Any:
    """`session` when its input and output shapes are the backbone's; ValueError otherwise."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    dim = outputs[0].shape[-1] if len(outputs) == 1 else None
    if len(inputs) != 1 or len(outputs) != 1 or list(inputs[0].shape[1:]) != [3, backbone.input_size,
                                                                            backbone.input_size] \
            or (isinstance(dim, int) and dim != backbone.feature_dim):
        raise ValueError(f"the ONNX model's shapes {inputs[0].shape} -> {outputs[0].shape} are not the backbone's")
    return session
