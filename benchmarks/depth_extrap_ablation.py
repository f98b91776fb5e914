"""Ablation of the cpu preset's deviations from the paper, each on the same step budget (looped model only).

    .venv/bin/python benchmarks/depth_extrap_ablation.py                 # 8000 steps per variant
    .venv/bin/python benchmarks/depth_extrap_ablation.py train.steps=20000

Variants: the cpu preset as is (NoPE); rotary positions; full causal attention instead of the 2-token window;
3-token window; no input injection; the answer read at a separate position after the input. Prints and writes
(runs/depth_extrap_ablation/<time>/ablation.json, ablation.md) best-over-R accuracy per hop for each.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time

from experiments import depth_extrap
from looprec import config as C, runs

VARIANTS = {
    "cpu preset (NoPE, window 2, injection, last input)": [],
    "RoPE": ["model.pos_emb=rope"],
    "full attention": ["model.attn_window=0"],
    "window 3": ["model.attn_window=3"],
    "no injection": ["model.injection=none"],
    "answer at a separate position": ["data.answer_at=next"],
}


def main():
  overrides = ["train.steps=8000", *sys.argv[1:]]
  base = C.override(depth_extrap.cpu(), overrides)
  base = dataclasses.replace(base, models={"looped": base.models["looped"]})
  out_dir = runs.make_run_dir("runs", "depth_extrap_ablation", "cpu")
  table = {}
  for name, extra in VARIANTS.items():
    cfg = C.override(base, extra)
    depth_extrap.validate(cfg)
    run_dir = os.path.join(out_dir, name.split(" (")[0].replace(" ", "_"))
    os.makedirs(run_dir, exist_ok=True)
    start = time.time()
    m = depth_extrap.run(cfg, run_dir)["models"]["looped"]
    table[name] = {"overrides": extra, "seconds": time.time() - start, "stages": m["stages"],
                   "best": {s: depth_extrap.best_over_loops(a) for s, a in m["accuracy"].items()}}
    print(f"{name}: {table[name]['seconds']:.0f} s", flush=True)
  runs.write_json(os.path.join(out_dir, "ablation.json"), {"overrides": overrides, "variants": table})
  splits = list(next(iter(table.values()))["best"])
  lines = [f"Best-over-R accuracy (R) per hop, looped model, {' '.join(overrides)}", "",
           "| variant | reached hop | " + " | ".join(splits) + " |", "|---" * (len(splits) + 2) + "|"]
  for name, row in table.items():
    cells = [f"{a:.2f} ({r})" for a, r in row["best"].values()]
    lines.append(f"| {name} | {row['stages'][-1][1]} | " + " | ".join(cells) + " |")
  text = "\n".join(lines) + "\n"
  with open(os.path.join(out_dir, "ablation.md"), "w") as f:
    f.write(text)
  print(text)
  print(f"results: {os.path.join(out_dir, 'ablation.json')}")


if __name__ == "__main__":
  main()
