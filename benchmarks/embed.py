"""Images/s of each backbone at its input size on this machine (forward pass on a fixed batch, channels_last, CPU).

Prints absolute throughput and the ratio to the default backbone (efficientnet_lite0) measured in the same process,
plus the end-to-end rate of `embed` (decode + transform + forward) on the packaged omniglot_small subset.

    OMP_NUM_THREADS=1 python benchmarks/embed.py [--batch 32] [--repeats 3] [--end-to-end 256]
"""

from __future__ import annotations

import argparse
import time

import torch

from oodml.errors import OodmlError
from oodml.features.backbones import BACKBONES, DEFAULT_BACKBONE, create_backbone
from oodml.features.extract import forward_chunk


def forward_rate(name: str, batch: int, repeats: int) -> tuple[float, int]:
    """(images/s, input size) of one backbone's forward pass on `batch` images, in the chunks `embed` uses."""
    try:
        bb = create_backbone(name)
    except OodmlError:
        bb = create_backbone(name, pretrained=False)  # e.g. resnet50 without cached weights: same speed
    model = bb.eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    chunk = forward_chunk(bb.input_size, batch)
    xs = [torch.randn(min(chunk, batch - s), 3, bb.input_size, bb.input_size).contiguous(
        memory_format=torch.channels_last) for s in range(0, batch, chunk)]
    with torch.inference_mode():
        model(xs[0])  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            for x in xs:
                model(x)
        dt = time.perf_counter() - t0
    return batch * repeats / dt, bb.input_size


def end_to_end_rate(n_images: int, batch: int) -> float:
    """images/s of `compute_features` (decode + transform + forward) on the first images of omniglot_small."""
    from oodml.data import load_dataset
    from oodml.features.extract import compute_features

    ds = load_dataset("omniglot_small")
    ds.paths, ds.labels = ds.paths[:n_images], ds.labels[:n_images]
    bb = create_backbone(DEFAULT_BACKBONE)
    t0 = time.perf_counter()
    compute_features(ds, bb, batch_size=batch)
    return n_images / (time.perf_counter() - t0)


def main() -> None:
    """Print one line per backbone: name, input size, images/s, ratio to the default backbone."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--end-to-end", type=int, default=256, help="images of omniglot_small to embed (0: skip)")
    args = ap.parse_args()
    names = [n for n in BACKBONES.names() if not n.startswith("timm:")]
    rates = {n: forward_rate(n, args.batch, args.repeats) for n in names}
    ref = rates[DEFAULT_BACKBONE][0]
    print(f"torch threads: {torch.get_num_threads()}, batch {args.batch}")
    for n, (rate, size) in rates.items():
        print(f"{n:20s} {size:4d} px  {rate:9.1f} img/s  x{rate / ref:6.2f} vs {DEFAULT_BACKBONE}")
    if args.end_to_end:
        e2e = end_to_end_rate(args.end_to_end, args.batch)
        print(f"embed omniglot_small ({args.end_to_end} images, {DEFAULT_BACKBONE}, decode+transform+forward): "
              f"{e2e:.1f} img/s  x{e2e / ref:.2f} of the pure forward rate")


if __name__ == "__main__":
    main()
