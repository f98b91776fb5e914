"""Milliseconds to make one training batch of the chain task (`data.ChainTask.train_examples`, the work of grain's
background thread in training), per preset and curriculum stage, for this checkout and, with --against REF, for
another commit side by side in one run (rounds alternate between the two, in alternating order; median of the
rounds).

    .venv/bin/python benchmarks/chain_batches.py [--against HEAD~1] [--rounds 5] [--batches 200]

The commit REF is checked out into a temporary git worktree and timed in a subprocess with that tree first on
sys.path; both must make the same batches (checked: a hash of every timed batch), else the script exits 1.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time

import side_by_side

CASES = (("depth_extrap", "cpu", 2), ("depth_extrap", "cpu", 4), ("depth_extrap", "paper", 2),
         ("depth_extrap", "paper", 20))


def parse():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--against", help="a git ref to time side by side with this checkout")
  parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (each: every case, both trees)")
  parser.add_argument("--batches", type=int, default=200, help="timed batches per case and round")
  parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)  # one round of this tree, as JSON
  return parser.parse_args()


def time_cases(batches: int) -> dict:
  """case -> (ms per batch, a hash of the batches) in this process."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from looprec import data, experiment  # pylint: disable=import-outside-toplevel
  out = {}
  for name, preset, stage in CASES:
    cfg = experiment.resolve(experiment.load(name), preset)[1]
    task, b = data.make_task(cfg.data), cfg.train.batch_size
    task.train_examples(stage, np.arange(b), task.curriculum.last)  # builds any chain pool once
    digest, start = hashlib.sha256(), time.perf_counter()
    for i in range(batches):
      ex = task.train_examples(stage, (i + 1) * b + np.arange(b), task.curriculum.last)
      digest.update(ex["tokens"].tobytes() + ex["target"].tobytes())
    out[f"{name} {preset} stage {stage} (B={b})"] = ((time.perf_counter() - start) / batches * 1e3,
                                                      digest.hexdigest()[:16])
  return out


def main():
  args = parse()
  if args.once:
    print(json.dumps(time_cases(args.batches)))
    return 0
  times = side_by_side.measure(args.against, "chain_batches.py", ["--batches", str(args.batches)], args.rounds)
  same = True
  for case in times[side_by_side.HERE][0]:
    cells = []
    for tree in times:
      ms = statistics.median(r[case][0] for r in times[tree])
      cells.append(f"{tree}: {ms:6.3f} ms")
      same &= times[tree][0][case][1] == times[side_by_side.HERE][0][case][1]
    ratio = ""
    if args.against:
      ms = [statistics.median(r[case][0] for r in times[t]) for t in times]
      ratio = f"   speed-up {ms[1] / ms[0]:.2f}x"
    print(f"{case:40s} " + "   ".join(cells) + ratio)
  print(f"the same batches in both trees: {same}")
  return 0 if same else 1


if __name__ == "__main__":
  sys.exit(main())
