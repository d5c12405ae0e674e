"""How far can the FID ladder go, and at what cost in classes? A table for choosing `make-splits` defaults.

For a features file, runs the ladder search (`oodml.splits.generate.walk_ladder`) under several settings of the knobs
that can stop its hard side (removal floor, step budget, tabu history, classes moved per step) and prints, per
setting: the steps taken and why the hard walk stopped, the conventional and the hardest FID and their ratio, and what
the hardest split keeps (classes and images per side, the smallest class). Each hardest split is also compared with
**random partitions of the same class counts** (mean FID of `--null` random draws): FID estimated from fewer class
means is larger by itself, so `hardest / null` says how much of the rise is real shift and how much is sample size.

    python baselines/ladder_tradeoff.py ~/.cache/oodml/features/cub200/efficientnet_lite0-<key>.npz
    python baselines/ladder_tradeoff.py F.npz --floors 0.5,0.35,0.25 --max-steps 300,1000 --csv out.csv
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from oodml import seeding
from oodml.features.io import FeatureSet
from oodml.splits.frechet import frechet_distance, one_blas_thread
from oodml.splits.generate import REMOVED, TEST, TRAIN, LadderCfg, Trajectory, _conventional_sides, walk_ladder


@dataclass(frozen=True)
class Row:
    """One setting's outcome."""

    floor: float
    max_steps: int
    tabu: int
    swaps: int | None
    min_gain: float
    patience: int
    steps_easier: int
    steps_harder: int
    stop: str
    fid_easiest: float
    fid_conv: float
    fid_hardest: float
    null_hardest: float
    train_classes: int
    test_classes: int
    train_images: int
    test_images: int
    smallest_class: int
    seconds: float

    @property
    def ratio(self) -> float:
        """Hardest FID over the conventional split's."""
        return self.fid_hardest / self.fid_conv

    @property
    def over_null(self) -> float:
        """Hardest FID over random partitions with the same class counts."""
        return self.fid_hardest / self.null_hardest


def null_fid(means: np.ndarray, present: np.ndarray, n_train: int, n_test: int, draws: int, seed: int) -> float:
    """Mean FID of `draws` random partitions of the present classes into `n_train` + `n_test` classes."""
    g = seeding.rng("ladder_tradeoff", "null", seed, n_train, n_test)
    idx = np.flatnonzero(present)
    out = []
    for _ in range(draws):
        perm = g.permutation(idx)
        out.append(frechet_distance(means[perm[:n_train]], means[perm[n_train:n_train + n_test]]))
    return float(np.mean(out))


def why_stopped(traj: Trajectory, cfg: LadderCfg, side: np.ndarray) -> str:
    """Which limit ended the hard walk."""
    if len(traj.harder) >= cfg.max_steps:
        return "step budget"
    at_floor = (int((side == TRAIN).sum()) <= traj.floors[0]) or (int((side == TEST).sum()) <= traj.floors[1])
    return "removal floor" if at_floor else "no improving move"


@one_blas_thread()
def evaluate(fs: FeatureSet, cfg: LadderCfg, null_draws: int) -> Row:
    """Run both walks under `cfg` and describe the hardest split."""
    raw = fs.class_means()
    present = np.isfinite(raw).all(axis=1)
    start, _ = _conventional_sides(fs, present, cfg.seed)
    t0 = time.perf_counter()
    traj = walk_ladder(np.where(present[:, None], raw, 0.0), start, cfg)
    seconds = time.perf_counter() - t0
    hardest = traj.sides(len(traj.easier) + len(traj.harder))
    easiest = traj.sides(0)
    counts = np.bincount(fs.labels, minlength=len(fs.class_names))
    n_tr, n_te = int((hardest == TRAIN).sum()), int((hardest == TEST).sum())
    kept = hardest != REMOVED
    return Row(
        floor=cfg.floor_fraction, max_steps=cfg.max_steps, tabu=cfg.tabu, swaps=cfg.swaps_per_step,
        min_gain=cfg.min_gain, patience=cfg.patience,
        steps_easier=len(traj.easier), steps_harder=len(traj.harder), stop=why_stopped(traj, cfg, hardest),
        fid_easiest=frechet_distance(raw[easiest == TRAIN], raw[easiest == TEST]),
        fid_conv=frechet_distance(raw[start == TRAIN], raw[start == TEST]),
        fid_hardest=frechet_distance(raw[hardest == TRAIN], raw[hardest == TEST]),
        null_hardest=null_fid(raw, present, n_tr, n_te, null_draws, cfg.seed),
        train_classes=n_tr, test_classes=n_te,
        train_images=int(counts[hardest == TRAIN].sum()), test_images=int(counts[hardest == TEST].sum()),
        smallest_class=int(counts[kept].min()), seconds=seconds)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _ints_or_none(text: str) -> list[int | None]:
    return [None if x in ("auto", "none") else int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("features", help="features file (.npz) of the dataset")
    ap.add_argument("--floors", default="0.5,0.35,0.25,0.15", help="floor_fraction values")
    ap.add_argument("--max-steps", default="300", help="max_steps values")
    ap.add_argument("--tabu", default="5", help="tabu values")
    ap.add_argument("--swaps", default="auto", help="swaps_per_step values ('auto': one per 100 classes)")
    ap.add_argument("--min-gain", default="0.001", help="min_gain values")
    ap.add_argument("--patience", default="5", help="patience values")
    ap.add_argument("--null", type=int, default=20, help="random partitions per setting for the null FID")
    ap.add_argument("--csv", help="also write the table as CSV")
    args = ap.parse_args(argv)
    fs = FeatureSet.load(args.features)
    print(f"{fs.dataset}: {len(fs.class_names)} classes, {len(fs.labels)} images, {fs.features.shape[1]}-d "
          f"({Path(args.features).name})", file=sys.stderr)
    rows = []
    grid = itertools.product(_floats(args.floors), [int(x) for x in args.max_steps.split(",")],
                             [int(x) for x in args.tabu.split(",")], _ints_or_none(args.swaps),
                             _floats(args.min_gain), [int(x) for x in args.patience.split(",")])
    for floor, steps, tabu, swaps, min_gain, patience in grid:
        cfg = replace(LadderCfg(), floor_fraction=floor, max_steps=steps, tabu=tabu, swaps_per_step=swaps,
                      min_gain=min_gain, patience=patience)
        rows.append(evaluate(fs, cfg, args.null))
        r = rows[-1]
        print(f"  floor {floor} steps {steps} tabu {tabu} swaps {swaps} min_gain {min_gain} patience {patience}: {r.steps_harder} hard steps "
              f"({r.stop}), FID {r.fid_conv:.1f} -> {r.fid_hardest:.1f} in {r.seconds:.1f} s", file=sys.stderr)
    head = ("| floor | max steps | tabu | swaps/step | min gain | patience | steps easier/harder | hard walk stopped by | FID easiest | "
            "FID conventional | FID hardest | hardest / conventional | null FID (same counts) | hardest / null | "
            "classes train+test | images train+test | smallest class |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        print(f"| {r.floor} | {r.max_steps} | {r.tabu} | {r.swaps or 'auto'} | {r.min_gain} | {r.patience} | {r.steps_easier}/{r.steps_harder} | "
              f"{r.stop} | {r.fid_easiest:.1f} | {r.fid_conv:.1f} | {r.fid_hardest:.1f} | {r.ratio:.2f} | "
              f"{r.null_hardest:.1f} | {r.over_null:.2f} | {r.train_classes}+{r.test_classes} | "
              f"{r.train_images}+{r.test_images} | {r.smallest_class} |")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            names = [k for k in Row.__dataclass_fields__] + ["ratio", "over_null"]
            w.writerow(names)
            for r in rows:
                w.writerow([getattr(r, k) for k in names])
    return 0 if all(math.isfinite(r.fid_hardest) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
