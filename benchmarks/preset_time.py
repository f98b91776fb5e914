"""End-to-end wall time of an experiment preset and each model's training time, for this checkout and, with
--against REF, another commit side by side in one run (`side_by_side`: rounds alternate between the trees;
median of the rounds). Each round is a fresh run folder in a temporary directory.

    .venv/bin/python benchmarks/preset_time.py depth_extrap --preset cpu --against 1eb7238 --rounds 2 \\
        models.looped.steps=4000 models.vanilla.steps=1 models.fixed.steps=1

Both trees must train the same models: the parameter sums and accuracies of every round are compared (exit 1
where they differ).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

import side_by_side


def parse():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("name", help="the experiment")
  ap.add_argument("overrides", nargs="*", help="dotted.key=value, as `looprec experiment` takes them")
  ap.add_argument("--preset", default=None)
  ap.add_argument("--against", help="a git ref to time side by side with this checkout")
  ap.add_argument("--rounds", type=int, default=1, help="alternating rounds (each: one run in every tree)")
  ap.add_argument("--out", default=None, help="also write every round's figures here as JSON")
  ap.add_argument("--once", action="store_true", help=argparse.SUPPRESS)  # one run of this tree, as JSON
  return ap.parse_intermixed_args()


def run_once(args) -> dict:
  """{"wall": s, "models": {name: {"train_seconds", "steps", "params_sum", "accuracy"}}} of one run here."""
  import time  # pylint: disable=import-outside-toplevel
  from looprec import experiment  # pylint: disable=import-outside-toplevel
  with tempfile.TemporaryDirectory() as runs:
    start = time.perf_counter()
    run_dir = experiment.run(args.name, args.preset, args.overrides, runs_root=runs)
    wall = time.perf_counter() - start
    with open(os.path.join(run_dir, "results.json"), encoding="utf-8") as f:
      results = json.load(f)
  keep = ("train_seconds", "steps", "params_sum", "accuracy")
  return {"wall": wall, "models": {n: {k: m.get(k) for k in keep} for n, m in results["models"].items()}}


def main():
  args = parse()
  if args.once:
    print(json.dumps(run_once(args)))
    return 0
  passed = [args.name, *args.overrides] + (["--preset", args.preset] if args.preset else [])
  runs = side_by_side.measure(args.against, "preset_time.py", passed, args.rounds)
  median = lambda tree, get: statistics.median(get(r) for r in runs[tree])
  first = runs[side_by_side.HERE][0]["models"]
  print(f"{args.name} {args.preset or '(default preset)'} {' '.join(args.overrides)}; median of {args.rounds} round(s)")
  for tree in runs:
    cells = [f"end to end {median(tree, lambda r: r['wall']):.1f} s"] + [
        f"{n} trains {median(tree, lambda r, n=n: r['models'][n]['train_seconds']):.1f} s" for n in first]
    print(f"  {tree:16s} " + ", ".join(cells))
  same = all(r["models"][n][k] == first[n][k] for t in runs for r in runs[t] for n in first
             for k in ("steps", "params_sum", "accuracy"))
  print(f"the same models in every round and tree: {same}")
  side_by_side.save(args.out, args, runs)
  return 0 if same else 1


if __name__ == "__main__":
  sys.exit(main())
