"""End-to-end `embed` speed (decode + transform + forward) on ONNX Runtime vs torch, and vs a bare ONNX Runtime
forward pass on the same preprocessed batch; all measured in one process on the same images.

For each backbone (efficientnet_lite0 with its real weights; resnet50 with random weights when its ImageNet weights
are not cached here: the export and the speed are the same) it prints images/s of
- `embed onnx`: oodml's path, `compute_features` with the ONNX Runtime forward (export done beforehand, cached):
  as many lanes as ORT threads, each decoding a batch and running it on a single-threaded session;
- `embed beside`: the same decoding in one thread beside a session of 2 intra-op threads (oodml's path before the
  lanes, 2026-12-07);
- `embed torch`: the same with the torch forward (channels_last, chunked: the path before ONNX Runtime);
- `bare ort`: `session.run` alone on the already decoded and transformed images, same batch size and threads;
- `bare ort spin`: the same on a session whose idle threads spin (ONNX Runtime's default, oodml's before 2026-11-29);
- `bare ort lanes`: the lanes' single-threaded sessions alone on the preprocessed batches, side by side;
- `embed before`: `embed onnx` as before `oodml/features/decode.py` (the transform as it is, Pillow decoding,
  decoding threads at normal priority); its features must equal `embed onnx`'s (printed);
- `decode`: decode + transform alone in this process (one core), now and before;
and the ratios `embed onnx / embed torch` (goal >= 2.5) and `embed onnx / bare ort` (goal >= 0.9; also against the
faster of the two bare passes).

Measured 2026-11-29 03:50-04:00 UTC on the 2-core dev machine under load 11-12 (other jobs), Lite0, 256 CUB-subset
images, batch 64, 2 ORT threads, best of 2 interleaved runs: oodml's embed before (1 decoding process, spinning
session) 14.5 img/s = 0.64 of the bare spinning pass (22.7); without spinning 18.8 (0.83); decoding in one thread
beside a non-spinning session (now) 22.7 = 1.00 of the bare spinning pass, 0.84 of the bare non-spinning one (27.1,
which the load favours); features identical. Decoding is not the limit (~3 ms per image on one core); the spinning
ORT threads and torch's 2-thread transform ops on a busy machine were.

Measured 2026-12-07 16:00-16:06 UTC, same machine and settings, load average 8.3 -> 7.9 (other jobs), best of 3
interleaved runs, `--skip-torch`: embed onnx 22.9 img/s = 0.92 of the bare forward pass (25.0); the path before
(`embed before`) 21.2 = 0.85; features identical. Again 16:25-16:30 UTC, load 8.6 -> 9.9: 21.8 = 0.82 of 26.7
(before 0.80; decode alone 151 vs 134 img/s). At load 15-20: 0.80-0.86 for both. The goal of 0.9 is met in one of the
two runs at load ~8 only: on this shared machine the load decides more than the decoding does.

Measured 2026-12-07 18:31 UTC on quiet cores (load 0.7 -> 1.3), same settings, best of 3: embed onnx 105.4 img/s =
0.76 of the bare forward pass (138.5); before 0.78; decode alone 457 img/s on one thread; features identical. The bare
forward leaves about 0.16 of the 2 cores idle, so a perfect packing would reach about 0.99 (printed at the end as the
bound; docs/features.md). With lanes (one single-threaded forward per core, each after its own decoding), 19:06 and
19:13 UTC, quiet cores (the study paused): 111.4 and 126.1 img/s = 0.93 and 1.10 of the bare 2-thread forward, 0.86
and 0.99 of the bare lanes alone; features identical.

    python benchmarks/embed.py [--images 256] [--batch 64] [--repeats 1] [--backbones efficientnet_lite0,resnet50]
                               [--skip-torch]

Images: the first N of the CUB-200 subset under $OODML_DATA/cub200_subset (else omniglot_small, packaged).
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from oodml.data import ImageDataset, load_dataset
from oodml.errors import OodmlError
from oodml.features import decode as decode_mod
from oodml.features import extract
from oodml.features.backbones import Backbone, create_backbone
from oodml.features.extract import compute_features, default_decode_threads, default_workers
from oodml.features.runtime import OnnxForward, TorchForward, _session
from oodml.runner import cpu_count


def images(n: int) -> ImageDataset:
    """The first `n` images of the CUB subset (or of omniglot_small when the CUB subset is absent)."""
    root = Path(os.environ.get("OODML_DATA", "../shared/data")) / "cub200_subset"
    ds = load_dataset("cub200", root) if root.is_dir() else load_dataset("omniglot_small")
    ds.paths, ds.labels = ds.paths[:n], ds.labels[:n]
    return ds


def backbone(name: str) -> tuple[Backbone, str]:
    """The backbone with its pretrained weights, or with random weights when they cannot be loaded here."""
    try:
        return create_backbone(name), "pretrained weights"
    except OodmlError:
        return create_backbone(name, pretrained=False), "random weights (pretrained not available offline)"


def best_rate(fn: Any, n: int, repeats: int) -> float:
    """Highest images/s over `repeats` calls of `fn` (each handling `n` images)."""
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = max(best, n / (time.perf_counter() - t0))
    return best


def legacy_embed(ds: ImageDataset, bb: Backbone, batch: int, fwd: OnnxForward) -> np.ndarray:
    """`compute_features` as before `oodml/features/decode.py`: the backbone's transform run as it is (Pillow's decode
    and resize, torchvision's ToTensor and Normalize) by decoding threads at the forward pass's priority."""
    steps, nice = decode_mod.eval_steps, extract.DECODE_NICE
    decode_mod.eval_steps = lambda transform: None  # type: ignore[assignment]
    extract.DECODE_NICE = 0  # decoding threads at the forward pass's priority, as before
    try:
        return compute_features(ds, bb, batch_size=batch, forward=fwd, workers=default_decode_threads())
    finally:
        decode_mod.eval_steps, extract.DECODE_NICE = steps, nice


def bench(name: str, ds: ImageDataset, batch: int, repeats: int, with_torch: bool = True) -> None:
    """Print one backbone's rates and ratios."""
    bb, weights = backbone(name)
    n = len(ds)
    t0 = time.perf_counter()
    onnx = OnnxForward(bb)  # exports (or loads the cached export) once
    export_s = time.perf_counter() - t0
    torch_fwd = TorchForward(bb, batch)
    images = decode_mod.EvalImages(ds, bb.eval_transform)
    same = np.array_equal(legacy_embed(ds, bb, batch, onnx), compute_features(ds, bb, batch_size=batch, forward=onnx))
    x = torch.stack([bb.eval_transform(ds.open(i)) for i in range(n)])
    batches = [x[s:s + batch] for s in range(0, n, batch)]
    spinning = _session(onnx.path, onnx.threads, spin=True)
    lane = onnx.single_threaded()
    onnx(batches[0])  # warm-up: session arena, thread pool
    rates: dict[str, float] = {}
    for _ in range(repeats):  # interleaved, best of each: the machine's load changes over time
        for label, fwd in (("embed torch", torch_fwd), ("embed onnx", onnx)):
            if label == "embed torch" and not with_torch:
                continue
            rate = best_rate(lambda: compute_features(ds, bb, batch_size=batch, forward=fwd), n, 1)
            rates[label] = max(rates.get(label, 0.0), rate)
        rate = best_rate(lambda: legacy_embed(ds, bb, batch, onnx), n, 1)
        rates["embed before"] = max(rates.get("embed before", 0.0), rate)
        rate = best_rate(lambda: compute_features(ds, bb, batch_size=batch, forward=onnx,
                                                  workers=default_decode_threads()), n, 1)
        rates["embed beside"] = max(rates.get("embed beside", 0.0), rate)
        for label, one in (("decode before", lambda i: bb.eval_transform(ds.open(i))), ("decode", images)):
            with extract._torch_threads(1):  # as in compute_features: the transforms' tensor ops on one thread
                rate = best_rate(lambda: [one(i) for i in range(n)], n, 1)
            rates[label] = max(rates.get(label, 0.0), rate)
        feed = [np.ascontiguousarray(b.numpy()) for b in batches]
        for label, session in (("bare ort", onnx.session), ("bare ort spin", spinning)):
            rate = best_rate(lambda: [session.run(None, {onnx.input_name: f}) for f in feed], n, 1)
            rates[label] = max(rates.get(label, 0.0), rate)
        with ThreadPoolExecutor(onnx.threads) as pool:  # the lanes' single-threaded forward alone, side by side
            rate = best_rate(lambda: list(pool.map(lane, batches)), n, 1)
        rates["bare ort lanes"] = max(rates.get("bare ort lanes", 0.0), rate)
    print(f"{name} ({weights}), {n} images of {ds.name}, batch {batch}, {onnx.threads} ORT/torch threads, "
          f"{default_decode_threads()} decoding threads (onnx) / {default_workers(n)} processes (torch); export/load "
          f"{export_s:.1f} s (once per weights)")
    for label in ("embed onnx", "embed beside", "embed before", "embed torch", "bare ort", "bare ort spin",
                  "bare ort lanes"):
        if label in rates:
            print(f"  {label:12s} {rates[label]:8.1f} img/s")
    print(f"  {'decode':12s} {rates['decode']:8.1f} img/s (decode + transform, one thread; before: "
          f"{rates['decode before']:.1f})")
    print(f"  features of embed onnx and embed before identical: {same}")
    if "embed torch" in rates:
        print(f"  embed onnx / embed torch = x{rates['embed onnx'] / rates['embed torch']:.2f} (goal >= 2.5)")
    print(f"  embed before / bare ort  = x{rates['embed before'] / rates['bare ort']:.2f}")
    print(f"  embed beside / bare ort  = x{rates['embed beside'] / rates['bare ort']:.2f}")
    print(f"  embed onnx / bare ort    = x{rates['embed onnx'] / rates['bare ort']:.2f} (goal >= 0.9)")
    best = max(rates["bare ort"], rates["bare ort spin"], rates["bare ort lanes"])
    print(f"  embed onnx / best bare   = x{rates['embed onnx'] / best:.2f} (the best of the three bare passes)")
    # the bound decoding sets on this machine: the bare (non-spinning) forward's CPU per image plus decoding's, spread
    # over the cores, against the forward's wall time per image
    t0, c0 = time.perf_counter(), time.process_time()
    for f in feed:
        onnx.session.run(None, {onnx.input_name: f})
    wall, cpu = (time.perf_counter() - t0) / n, (time.process_time() - c0) / n
    cores = cpu_count()
    need = (cpu + 1.0 / rates["decode"]) / cores
    print(f"  bare ort: {wall * 1e3:.2f} ms wall and {cpu * 1e3:.2f} ms CPU per image (cores busy {cpu / wall:.2f} of "
          f"{cores}); decode {1e3 / rates['decode']:.2f} ms CPU per image; so with this session no pipeline on {cores} "
          f"cores beats x{wall / max(wall, need):.2f} of it (the lanes' single-threaded sessions use less CPU per "
          "image and can)")


def main() -> None:
    """Benchmark each backbone named in --backbones."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--backbones", default="efficientnet_lite0,resnet50")
    ap.add_argument("--skip-torch", action="store_true", help="leave out the (slow) torch forward pass")
    args = ap.parse_args()
    ds = images(args.images)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for name in args.backbones.split(","):
        bench(name.strip(), ds, args.batch, args.repeats, not args.skip_torch)
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
