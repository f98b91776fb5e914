"""Seed spread of depth extrapolation: the cpu preset's looped model trained with several seeds.

    .venv/bin/python benchmarks/depth_extrap_seeds.py                       # seeds 0 1 2, looped model only
    .venv/bin/python benchmarks/depth_extrap_seeds.py --seeds 0 1 2 3 4 --all-models train.steps=10000

Each seed changes both the model/training seed and the data seed (graph, held-out split, stream). Prints and
writes (runs/depth_extrap_seeds/<time>/seeds.json, seeds.md) the mean, spread and range of the best-over-R
accuracy per hop.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time

import numpy as np

from experiments import depth_extrap
from looprec import config as C, runs


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--preset", default="cpu")
  parser.add_argument("--all-models", action="store_true", help="train the baselines too")
  parser.add_argument("--runs-dir", default="runs")
  args, overrides = parser.parse_known_args()
  base = C.override(depth_extrap.PRESETS[args.preset](), overrides)
  if not args.all_models:
    base = dataclasses.replace(base, models={"looped": base.models["looped"]})
  out_dir = runs.make_run_dir(args.runs_dir, "depth_extrap_seeds", args.preset)
  per_seed = {}
  for seed in args.seeds:
    cfg = dataclasses.replace(base, seed=seed, data=dataclasses.replace(base.data, seed=seed))
    depth_extrap.validate(cfg)
    run_dir = os.path.join(out_dir, f"seed{seed}")
    os.makedirs(run_dir, exist_ok=True)
    start = time.time()
    per_seed[seed] = depth_extrap.run(cfg, run_dir)["models"]
    print(f"seed {seed}: {time.time() - start:.0f} s", flush=True)
  summary = summarize(per_seed)
  runs.write_json(os.path.join(out_dir, "seeds.json"), {"seeds": args.seeds, "overrides": overrides,
                                                        "summary": summary, "per_seed": per_seed})
  text = to_markdown(summary, args.seeds, base.data.curriculum.last_hop)
  with open(os.path.join(out_dir, "seeds.md"), "w") as f:
    f.write(text)
  print(text)
  print(f"results: {os.path.join(out_dir, 'seeds.json')}")


def summarize(per_seed: dict) -> dict:
  """model -> split -> {mean, std, min, max, values} of best-over-R accuracy, and the R reaching it per seed."""
  out = {}
  for name in next(iter(per_seed.values())):
    out[name] = {}
    for split in per_seed[next(iter(per_seed))][name]["accuracy"]:
      best = [depth_extrap.best_over_loops(s[name]["accuracy"][split]) for s in per_seed.values()]
      values = [acc for acc, _ in best]
      out[name][split] = {"mean": float(np.mean(values)), "std": float(np.std(values)),
                          "min": float(np.min(values)), "max": float(np.max(values)), "values": values,
                          "loops": [r for _, r in best]}
  return out


def to_markdown(summary: dict, seeds, k: int) -> str:
  lines = [f"Best-over-R accuracy over seeds {seeds} (trained depth k = {k}): mean ± std [min, max]", ""]
  for name, splits in summary.items():
    lines += [f"**{name}**", "", "| split | mean ± std | min | max | R per seed |", "|---|---|---|---|---|"]
    for split, s in splits.items():
      lines.append(f"| {split} | {s['mean']:.2f} ± {s['std']:.2f} | {s['min']:.2f} | {s['max']:.2f} | "
                   f"{', '.join(map(str, s['loops']))} |")
    lines.append("")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
