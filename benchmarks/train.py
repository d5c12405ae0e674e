"""Training images/s of oodml's `full` regime vs a bare timm-style training loop, same device, model and batch, in one
process.

- `oodml`: `weight_transfer` (softmax classifier on the embedding, the same objective as the bare loop) fitted by
  oodml's trainer on `make_inputs("full", ...)` images: class-balanced batches, the backbone's train transform,
  batches decoded/augmented in `--loader-workers` DataLoader processes (0: in process, the CPU default), bf16
  autocast and channels_last on CUDA.
- `bare`: the loop of timm's train.py reduced to its core: a DataLoader (shuffle, same workers, pinned memory on
  CUDA, persistent workers) over the same images and train transform, the same backbone + linear embedding + linear
  classifier, cross-entropy, Adam, the same autocast/channels_last policy.

It prints images/s of both and their ratio (goal: oodml >= 0.9 x bare). CPU here with a tiny config; the same
script runs on a GPU (`--device cuda`, e.g. `--backbone efficientnet_lite0 --batch 112`).

    python benchmarks/train.py [--backbone conv4] [--dataset omniglot_small] [--batch 64] [--iterations 20]
                               [--loader-workers 1] [--device auto]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import time

import numpy as np
import torch
from torch import nn

from oodml.data import load_dataset
from oodml.features.backbones import create_backbone
from oodml.methods import MethodContext, build_method, make_inputs
from oodml.methods.nets import amp_dtype, autocast


class _Train(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self, ds: object, transform: object) -> None:
        self.ds, self.transform = ds, transform

    def __len__(self) -> int:
        return len(self.ds)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.ds.open(i)), int(self.ds.labels[i])  # type: ignore[attr-defined,operator]


def bare_rate(ds: object, backbone: str, batch: int, iterations: int, workers: int, device: str) -> float:
    """images/s of the bare loop (after 2 warm-up iterations)."""
    torch.manual_seed(0)
    bb = create_backbone(backbone)
    n_classes = len(ds.class_names)  # type: ignore[attr-defined]
    model = nn.Sequential(bb, nn.Linear(bb.feature_dim, 128), nn.Linear(128, n_classes)).to(device).train()
    cuda = device.startswith("cuda")
    if cuda:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loader = torch.utils.data.DataLoader(
        _Train(ds, bb.train_transform), batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
        pin_memory=cuda, persistent_workers=workers > 0, prefetch_factor=2 if workers else None)
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    t0 = 0.0
    for it, (x, y) in enumerate(itertools.islice(batches, iterations + 2)):
        if it == 2:
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(torch.device(device)):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if cuda:
        torch.cuda.synchronize()
    rate = iterations * batch / (time.perf_counter() - t0)
    del batches, loader  # stop the persistent workers now, not in a later fork's garbage collection
    gc.collect()
    return rate


def oodml_rate(ds: object, backbone: str, batch: int, iterations: int, workers: int, device: str) -> float:
    """images/s of oodml's full-regime fit (2 warm-up iterations timed separately and subtracted)."""
    rows = np.arange(len(ds))  # type: ignore[arg-type]
    labels = np.asarray(ds.labels)  # type: ignore[attr-defined]

    def fit(n: int) -> float:
        params = {"iterations": n, "batch_size": batch, "samples_per_class": 2, "backbone_lr": 1e-4}
        m = build_method("weight_transfer", MethodContext(regime="full", backbone=backbone, device=device), params)
        x = make_inputs("full", features=None, rows=rows, dataset=ds, backbone=backbone, loader_workers=workers)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        m.fit(x, labels)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    warm = fit(2)
    return iterations * batch / max(1e-9, fit(iterations + 2) - warm)


def main() -> None:
    """Print both rates and their ratio."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="conv4")
    ap.add_argument("--dataset", default="omniglot_small")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--loader-workers", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs of each; the best is kept")
    args = ap.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    ds = load_dataset(args.dataset)
    print(f"{args.backbone} on {args.dataset} ({len(ds)} images), batch {args.batch}, {args.iterations} iterations, "
          f"device {device}, torch threads {torch.get_num_threads()}, amp {amp_dtype(torch.device(device))}")
    rates: dict[str, float] = {}
    for _ in range(args.repeats):
        for label, fn, workers in (("bare", bare_rate, args.loader_workers),
                                   ("oodml", oodml_rate, args.loader_workers),
                                   ("oodml in-process", oodml_rate, 0)):
            rate = fn(ds, args.backbone, args.batch, args.iterations, workers, device)
            rates[label] = max(rates.get(label, 0.0), rate)
    print(f"  bare loop ({args.loader_workers} loader workers) {rates['bare']:9.1f} img/s")
    print(f"  oodml     ({args.loader_workers} loader workers) {rates['oodml']:9.1f} img/s")
    print(f"  oodml     (in process)          {rates['oodml in-process']:9.1f} img/s")
    print(f"  oodml / bare = x{rates['oodml'] / rates['bare']:.2f} (goal >= 0.9); "
          f"in process / bare = x{rates['oodml in-process'] / rates['bare']:.2f}")


if __name__ == "__main__":
    main()
