"""Where the depth-scan options part from the default step's bits: each option's gradient, leaf by leaf, against
the default scan's, at one of benchmarks/vs_pytorch.py's shapes (XLA_FLAGS as set in the environment).

    .venv/bin/python benchmarks/scan_bits.py [--shape tiny]

The optimizer is replaced by SGD with a step of 1, so one step's parameter change is the gradient. Rows:
`remat=all` (`jax.checkpoint` saving every residual: the same program structure as remat, nothing recomputed),
`remat=dots`, `unroll=R`. Each leaf that differs prints its largest absolute difference and its largest
gradient magnitude; "bitwise" where none differs.
"""
from __future__ import annotations

import argparse

import jax
import numpy as np
import optax

import vs_pytorch
from looprec import loop, train
from looprec.config import TrainConfig

ROWS = ("remat=all", "remat=dots", "unroll=R")


def gradient(shape, batch, variant: str) -> list:
  """[(path, gradient)] of one step of `variant` (a vs_pytorch.VARIANTS row) from the shared init."""
  run, _ = vs_pytorch.looprec_step(shape, TrainConfig(), batch, variant)
  init = jax.tree_util.tree_leaves(jax.device_get(run(0)))
  after = jax.tree_util.tree_flatten_with_path(jax.device_get(run(1)))[0]
  return [(jax.tree_util.keystr(p), a - b) for a, (p, b) in zip(init, after)]


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--shape", default="tiny", choices=list(vs_pytorch.SHAPES))
  args = ap.parse_args()
  train.make_optimizer = lambda cfg: optax.sgd(1.0)  # the parameter change is the gradient
  loop.REMAT_POLICIES["loop"] = jax.checkpoint_policies.everything_saveable  # remat=loop's scan, saving all
  vs_pytorch.VARIANTS["remat=all"] = ("einsum", lambda r: loop.Scan(remat="loop"))
  shape = vs_pytorch.SHAPES[args.shape]
  batch = vs_pytorch.make_batch(np.random.default_rng(0), shape[4], shape[5], shape[6])
  base = gradient(shape, batch, "looprec")
  for row in ROWS:
    diffs = [(p, float(np.max(np.abs(g - h))), float(np.max(np.abs(g)))) for (p, g), (_, h) in
             zip(base, gradient(shape, batch, row))]
    moved = [d for d in diffs if d[1]]
    print(f"{row}: {'bitwise' if not moved else f'{len(moved)} of {len(diffs)} leaves differ'}")
    for p, d, g in moved:
      print(f"  {p:<45} differs by {d:.1e} (largest |gradient| {g:.1e})")


if __name__ == "__main__":
  main()
