"""Ablation of the cpu preset's deviations from the paper, each on the same step budget (looped model only).

    .venv/bin/python benchmarks/depth_extrap_ablation.py                 # 8000 steps per variant
    .venv/bin/python benchmarks/depth_extrap_ablation.py train.steps=20000

Variants: the cpu preset as is (NoPE); rotary positions; full causal attention instead of the 2-token window;
3-token window; no input injection; the answer read at a separate position after the input. Prints and writes
(runs/depth_extrap_ablation/<time>/ablation.json, ablation.md) best-over-R accuracy per hop for each.
`run_variants` and `to_markdown` are shared with benchmarks/depth_extrap_full_attention.py.
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


def run_variants(base, variants: dict, out_dir: str) -> dict:
  """Trains and evaluates `base` with each variant's overrides (depth_extrap.run, every model of base) in
  out_dir/<variant>; returns variant -> {overrides, seconds, models: name -> {stages, steps, trained_max_hop,
  best: split -> (accuracy, R), accuracy}}. A variant whose variant.json exists in its folder is read back, not
  re-run, so an interrupted sweep resumes at the first unfinished variant (a half-trained one starts over)."""
  table = {}
  for name, extra in variants.items():
    run_dir = variant_dir(out_dir, name)
    done = os.path.join(run_dir, "variant.json")
    if os.path.isfile(done):
      table[name] = runs.read_json(done)
      print(f"{name}: done before ({table[name]['seconds']:.0f} s)", flush=True)
      continue
    cfg = C.override(base, extra)
    depth_extrap.validate(cfg)
    os.makedirs(run_dir, exist_ok=True)
    start = time.time()
    models = depth_extrap.run(cfg, run_dir)["models"]
    table[name] = {"overrides": extra, "seconds": time.time() - start, "commit": runs.code_commit(), "models": {
        m: {"stages": r["stages"], "steps": r["steps"], "trained_max_hop": r["trained_max_hop"],
            "train_seconds": r["train_seconds"], "accuracy": r["accuracy"],
            "best": {s: depth_extrap.best_over_loops(a) for s, a in r["accuracy"].items()}}
        for m, r in models.items()}}
    runs.write_json(done, table[name])
    print(f"{name}: {table[name]['seconds']:.0f} s", flush=True)
  return table


def variant_dir(out_dir: str, name: str) -> str:
  """A variant's run folder: its name up to any parenthesis, spaces as underscores."""
  return os.path.join(out_dir, name.split(" (")[0].replace(" ", "_"))


def to_markdown(table: dict, title: str, model: str = "looped") -> str:
  """variant x split: best-over-R accuracy (R) of one model, with the hop its curriculum reached."""
  splits = list(next(iter(table.values()))["models"][model]["best"])
  lines = [title, "", "| variant | reached hop | " + " | ".join(splits) + " |", "|---" * (len(splits) + 2) + "|"]
  for name, row in table.items():
    m = row["models"][model]
    cells = [f"{a:.2f} ({r})" for a, r in (m["best"].get(s, (float("nan"), "—")) for s in splits)]
    lines.append(f"| {name} | {m['trained_max_hop']} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def main():
  overrides = ["train.steps=8000", *sys.argv[1:]]
  base = C.override(depth_extrap.cpu(), overrides)
  base = dataclasses.replace(base, models={"looped": base.models["looped"]})
  out_dir = runs.make_run_dir("runs", "depth_extrap_ablation", "cpu")
  table = run_variants(base, VARIANTS, out_dir)
  runs.write_json(os.path.join(out_dir, "ablation.json"), {"overrides": overrides, "variants": table})
  text = to_markdown(table, f"Best-over-R accuracy (R) per hop, looped model, {' '.join(overrides)}")
  with open(os.path.join(out_dir, "ablation.md"), "w") as f:
    f.write(text)
  print(text)
  print(f"results: {os.path.join(out_dir, 'ablation.json')}")


if __name__ == "__main__":
  main()
