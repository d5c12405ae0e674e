"""Paper-scale full-regime training speed on a GPU, and the CUB-200 ladder it implies (goal: <= 1 h on one H200).

The ooDML protocol's training step at its scale: a backbone at 224 px (ResNet-50 with random weights, or Lite0),
frozen BatchNorm, a 512-d linear embedding (oodml's `EmbeddingNet`: bf16 autocast and channels_last on CUDA),
margin loss (beta 1.2, margin 0.2) on distance-weighted pairs (PML), Adam lr 1e-5, batches of 112 = 56 classes x 2
images. Batches come from images decoded once into a uint8 tensor on the device and augmented there
(`oodml/features/gpu.py`: random-resized crop + flip + normalisation as one `grid_sample`), so no CPU pipeline limits
the rate. Images: synthetic noise by default (no data needed); `--data-root DIR` uses CUB-200 images from DIR.

It prints img/s of the whole step, of the augmentation alone and of the model step alone, the peak GPU memory, and
the hours of the CUB ladder at 200 epochs per level: the shipped ladder (`splits/cub200.json`, images per level from
`benchmarks/cub200_class_counts.json`) and the paper's 9 levels at the conventional 5,864 training images each.

    python benchmarks/paper_scale.py [--backbone resnet50] [--batch 112] [--iterations 40] [--device auto]
    python benchmarks/paper_scale.py --device cpu --backbone conv4 --size 28 --store 32 --batch 8 --iterations 2
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from oodml.features.backbones import create_backbone
from oodml.features.gpu import decode_uint8, ladder_hours, random_resized_crop_flip, split_train_images
from oodml.methods.nets import EmbeddingNet, amp_dtype, make_head

ROOT = Path(__file__).resolve().parent.parent
PAPER_LEVELS, CONVENTIONAL_TRAIN, EPOCHS = 9, 5864, 200


def images(args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(uint8 images on the device, labels on the device, description)."""
    if args.data_root:
        from oodml.data import load_dataset

        ds = load_dataset("cub200", args.data_root)
        rows = np.linspace(0, len(ds) - 1, min(args.images, len(ds))).astype(int)
        t0 = time.perf_counter()
        x = decode_uint8(ds, args.store, rows.tolist(), threads=os.cpu_count() or 1)
        what = f"{len(rows)} CUB images decoded once in {time.perf_counter() - t0:.1f} s"
        labels = torch.as_tensor(ds.labels[rows])
    else:
        g = torch.Generator().manual_seed(0)
        small = torch.randint(0, 256, (args.images, 3, args.store // 8, args.store // 8), generator=g)
        x = torch.nn.functional.interpolate(small.float(), size=args.store, mode="bilinear").to(torch.uint8)
        labels = torch.arange(args.images) % max(2, args.images // 16)
        what = f"{args.images} synthetic images"
    return x.to(device), labels.to(device), f"{what}, {args.store} px, {x.numel() / 2**30:.2f} GiB uint8"


def balanced(labels: np.ndarray, batch: int, rng: np.random.Generator) -> np.ndarray:
    """batch / 2 classes x 2 images (the ooDML sampler)."""
    classes = rng.choice(np.unique(labels), size=batch // 2, replace=False)
    return np.concatenate([rng.choice(np.flatnonzero(labels == c), size=2, replace=False) for c in classes])


def main() -> None:
    """Time the step and print the extrapolation."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--batch", type=int, default=112)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--store", type=int, default=256, help="side of the stored uint8 images")
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--goal-hours", type=float, default=1.0)
    args = ap.parse_args()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x, labels, what = images(args, device)
    labels_np = labels.cpu().numpy()
    bb = create_backbone(args.backbone, pretrained=False)
    mean, std = _normalisation(bb)
    net = EmbeddingNet(bb, make_head(bb.feature_dim, 512), freeze_bn=True).to(device).train()
    from pytorch_metric_learning import losses, miners

    loss_fn = losses.MarginLoss(margin=0.2, nu=0.0, beta=1.2)
    miner = miners.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-5, weight_decay=4e-4)
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    print(f"{args.backbone} (random weights) at {args.size} px, batch {args.batch}, on {name}, "
          f"autocast {amp_dtype(device)}, channels_last {cuda}; {what}")

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        idx = balanced(labels_np, args.batch, rng)
        sel = torch.as_tensor(idx, device=device)
        return random_resized_crop_flip(x[sel], args.size, rng, mean, std), labels[sel]

    def step(xb: torch.Tensor, yb: torch.Tensor) -> None:
        emb = torch.nn.functional.normalize(net(xb), dim=1)
        loss = loss_fn(emb, yb, miner(emb, yb))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def rate(fn: object, n: int) -> float:
        for _ in range(args.warmup):
            fn()  # type: ignore[operator]
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()  # type: ignore[operator]
        sync()
        return n * args.batch / (time.perf_counter() - t0)

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    full = rate(lambda: step(*batch()), args.iterations)
    fixed = batch()
    model_only = rate(lambda: step(*fixed), args.iterations)
    augment_only = rate(batch, args.iterations)
    print(f"  training step (augment + model) {full:9.1f} img/s")
    print(f"  model step alone                {model_only:9.1f} img/s")
    print(f"  GPU augmentation alone          {augment_only:9.1f} img/s")
    if cuda:
        print(f"  peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    counts = json.loads((ROOT / "benchmarks" / "cub200_class_counts.json").read_text())["counts"]
    shipped = split_train_images(ROOT / "splits" / "cub200.json", counts)
    paper = [CONVENTIONAL_TRAIN] * PAPER_LEVELS
    for label, levels in (("shipped CUB ladder", shipped), ("paper CUB ladder", paper)):
        hours = ladder_hours(levels, EPOCHS, full)
        verdict = "meets" if hours <= args.goal_hours else "misses"
        print(f"  {label}: {len(levels)} levels, {sum(levels):,} training images x {EPOCHS} epochs = "
              f"{sum(levels) * EPOCHS:,} images -> {hours:.2f} h at {full:.0f} img/s ({verdict} the goal of "
              f"<= {args.goal_hours:g} h)")


def _normalisation(bb: object) -> tuple[list[float], list[float]]:
    """The backbone's Normalize mean/std (from its eval transform), else 0.5/0.5."""
    from oodml.features.decode import flatten_transform

    for t in flatten_transform(getattr(bb, "eval_transform", None)):
        if type(t).__name__ == "Normalize":
            return [float(v) for v in t.mean], [float(v) for v in t.std]
    return [0.5] * 3, [0.5] * 3


if __name__ == "__main__":
    main()
