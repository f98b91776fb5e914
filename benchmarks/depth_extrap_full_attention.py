"""Depth extrapolation with the paper's attention at CPU size: a small grid (issue 19, item 4).

    .venv/bin/python benchmarks/depth_extrap_full_attention.py          # the grid, ~60 min on 2 loaded cores
    .venv/bin/python benchmarks/depth_extrap_full_attention.py --cells "N=200 M=10 k=2" train.max_minutes=1

Every cell is the depth_extrap `paper` preset (full causal attention, NoPE, no input injection, N(0, 1)
embeddings, zero-initialised output projections (c_scale 0), dropout 0.1 until a stage's first check, AdamW over
every parameter at lr 1e-4 with 2,000 warmup steps and no clipping, batch 128, the answer at the pad after the
input, the optimizer restarted per stage, a stop when the last stage passes) made CPU-sized by CPU_SIZE, then
changed by its GRID entry along what the paper says matters: the graph (entities N, relations M: every relation is
a permutation of the N entities), the curriculum depth k and the R range. Each cell trains the looped model and the
vanilla (R = 1) model of the same block, each for at most train.max_minutes, and reports the curriculum stage
reached and the best-over-R accuracy beyond k. Cells run in runs/depth_extrap_full_attention/<--out> one after the
other; a finished cell is kept, so the same command resumes. The summary goes to results/ (--summary).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shlex

from depth_extrap_ablation import run_variants, to_markdown, variant_dir
from experiments import depth_extrap
from looprec import config as C, data, runs, selection

# The paper preset at CPU size; every cell shares these
CPU_SIZE = [
    "model.d_model=64", "model.n_heads=4", "model.n_layers=2", "model.dtype=float32",  # no fast bf16 on a CPU
    "data.train_chains_per_hop=0", "data.hop_weights=uniform", "data.test_fraction=0.1",  # fresh chains
    "data.curriculum.check=steps", "data.curriculum.min_epochs=0", "train.eval_every=250",  # no epochs to count
    "data.n_eval=256", "train.steps=100000", "train.max_minutes=6", "train.stage_checkpoints=false",
    "train.warmup_steps=200",  # the paper's 2,000 would be most of a CPU cell's budget
    "train.loop_programs=one",  # one compiled step for every R (the same steps), not one per R
]
MODELS = {"looped": depth_extrap.ModelRun(n_layers=2, recurrence="dynamic:4,2,8"),
          "vanilla": depth_extrap.ModelRun(n_layers=2, recurrence="fixed:1", steps=800)}


def cell(n: int, m: int, k: int, recurrence: str = "dynamic:4,2,8") -> list[str]:
  """The overrides of one grid cell: graph N x M, curriculum 2..k, evaluated to k + 3 hops at R = 1..2(k + 3)."""
  return [f"data.n_entities={n}", f"data.n_relations={m}", f"data.curriculum.last_hop={k}",
          f"eval.max_hop={k + 3}", f"data.seq_len={k + 5}", f"eval.max_loops={2 * (k + 3)}",
          f"models.looped.recurrence={recurrence}"]


GRID = {  # in the order they run: the smallest graph first, a larger-lr control beside it
    "N=20 M=4 k=2": cell(20, 4, 2),
    "N=20 M=4 k=2 lr=1e-3": [*cell(20, 4, 2), "train.lr=1e-3"],
    "N=20 M=8 k=2": cell(20, 8, 2),
    "N=200 M=10 k=2": cell(200, 10, 2),
    "N=20 M=4 k=2 R=[2,4]": cell(20, 4, 2, "dynamic:3,2,4"),
    "N=20 M=4 k=3": cell(20, 4, 3),
}


def base_config(overrides: list[str]):
  """The paper preset, CPU-sized, with the looped and vanilla models only, then `overrides`."""
  paper = depth_extrap.paper()
  return C.override(C.override(dataclasses.replace(paper, models=MODELS), CPU_SIZE), overrides)


def summary(table: dict, out_dir: str, overrides: list[str], command: str, train_commit: str | None) -> dict:
  """The results/ summary: per cell its overrides, curriculum depth k and per model the stages, steps, time, the
  training curves (`curves`) and per hop the test accuracy at the validation-chosen R beside the oracle."""
  cells = {}
  for name, row in table.items():
    k = C.override(base_config(overrides), row["overrides"]).data.curriculum.last_hop
    cells[name] = {"overrides": row["overrides"], "k": k, "seconds": round(row["seconds"]), "models": {
        m: {"stages": r["stages"], "steps": r["steps"], "train_seconds": round(r["train_seconds"]),
            "curves": curves(os.path.join(variant_dir(out_dir, name), "tb", m)),
            "hops": {str(data.hop_of(s)): selection.select(r["accuracy"], s) for s in r["accuracy"]
                     if not selection.is_val(s)}}
        for m, r in row["models"].items()}}
  return {"schema": 1, "study": "depth_extrap_full_attention", "preset": "paper", "cpu_size": CPU_SIZE,
          "overrides": overrides, "command": command, "machine": runs.machine(),
          "commit": {"train": train_commit or next(iter(table.values()), {}).get("commit"),
                     "summary": runs.code_commit()}, "cells": cells}


def curves(tb_dir: str, every: int = 250) -> dict:
  """From a model's TensorBoard scalars: the training loss (at step 0, then the mean over each `every` steps,
  labelled with the window's last logged step) and the curriculum gate's accuracy at each check, [[step, value],
  ...]."""
  scalars = runs.tb_scalars(tb_dir)
  windows = {}
  for step, loss in scalars.get("train/loss", []):
    windows.setdefault(-(-step // every), []).append([step, loss])
  gate = [tag for tag in scalars if tag.startswith("eval/")]
  return {"loss": [[points[-1][0], round(sum(v for _, v in points) / len(points), 3)]
                   for _, points in sorted(windows.items())],
          "gate": {tag.removeprefix("eval/"): [[s, round(a, 3)] for s, a in scalars[tag]] for tag in gate}}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cells", nargs="+", choices=list(GRID), default=list(GRID))
  parser.add_argument("--out", default="grid", help="folder under runs/depth_extrap_full_attention (resumes)")
  parser.add_argument("--summary", default="results/depth_extrap_full_attention.json")
  parser.add_argument("--train-commit", help="the commit that trained cells whose variant.json records none")
  args, overrides = parser.parse_known_args()
  base = base_config(overrides)
  out_dir = os.path.join("runs", "depth_extrap_full_attention", args.out)
  table = run_variants(base, {c: GRID[c] for c in args.cells}, out_dir)
  cells = ["--cells", *args.cells] if args.cells != list(GRID) else []
  command = shlex.join([".venv/bin/python", "benchmarks/depth_extrap_full_attention.py", *cells, *overrides])
  runs.write_json(args.summary, summary(table, out_dir, overrides, command, args.train_commit))
  for model in base.models:
    print(to_markdown(table, f"{model}: best-over-R accuracy (R) per split"))
  print(f"summary: {args.summary}")


if __name__ == "__main__":
  main()
