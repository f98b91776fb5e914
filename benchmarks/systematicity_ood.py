"""What speeds up OOD composition on a CPU: the cpu preset's looped model under variants, each on the same
step budget, side by side in one run.

    .venv/bin/python benchmarks/systematicity_ood.py                        # 12k steps per variant, ~5 min each
    .venv/bin/python benchmarks/systematicity_ood.py train.steps=40000

Variants: the cpu preset as is; a Grokfast-EMA gradient filter (alpha 0.98, lambda 2); input injection;
no position embedding (NoPE); six loops instead of four; a denser graph with more composed training facts
(out-degree 15, phi 12); every atomic fact four times per epoch. Writes (runs/systematicity_ood/<time>/)
ood.json, ood.md (mean accuracy of the last evaluations per split, training seconds, the first step each split
reached 0.5) and ood.png (the OOD curves).
"""
from __future__ import annotations

import dataclasses
import os
import sys

from experiments import systematicity
from looprec import config as C, plots, runs

VARIANTS = {
    "cpu preset": [],
    "grokfast": ["train.grokfast_alpha=0.98", "train.grokfast_lambda=2.0"],
    "injection add": ["model.injection=add"],
    "NoPE": ["model.pos_emb=none"],
    "R = 6": ["models.looped.recurrence=fixed:6", "eval.max_loops=12"],
    "out-degree 15, phi 12": ["data.out_degree=15", "data.phi=12.0"],
    "atomic facts x4": ["data.atomic_repeats=4"],
}
SHOWN = ("test_inferred_iid", "test_inferred_ood", "test_inferred_ood_first", "test_inferred_ood_second")


def main():
  overrides = ["train.steps=12000", "train.eval_every=500", *sys.argv[1:]]
  base = C.override(systematicity.cpu(), overrides)
  base = dataclasses.replace(base, models={"looped": base.models["looped"]})
  out_dir = runs.make_run_dir("runs", "systematicity_ood", "cpu")
  table, curves = {}, {}
  for name, extra in VARIANTS.items():
    cfg = C.override(base, extra)
    systematicity.validate(cfg)
    run_dir = os.path.join(out_dir, name.replace(" ", "_"))
    os.makedirs(run_dir, exist_ok=True)
    out = systematicity.run(cfg, run_dir)
    m, curves[name] = out["models"]["looped"], out["curves"]["looped"]
    table[name] = {"overrides": extra, "seconds": m["train_seconds"], "final": m["final"],
                   "half": systematicity.stage_steps(curves[name], 0.5)}
    print(f"{name}: {m['train_seconds']:.0f} s, OOD {m['final']['test_inferred_ood']:.2f}", flush=True)
  result = {"overrides": overrides, "variants": table, "curves": curves}
  runs.write_json(os.path.join(out_dir, "ood.json"), result)
  plots.grokking({split: {name: c[split] for name, c in curves.items()} for split in SHOWN},
                 os.path.join(out_dir, "ood.png"))
  text = markdown(result)
  with open(os.path.join(out_dir, "ood.md"), "w") as f:
    f.write(text)
  print(text)
  print(f"results: {os.path.join(out_dir, 'ood.json')}")


def markdown(result: dict, last: int = 4) -> str:
  """The table of ood.json: per variant and split, the mean of the last `last` evaluations (the final one alone
  is noisy: test_inferred_ood has ~100 facts) and the first step at >= 0.5."""
  lines = [f"Looped model (cpu preset), {' '.join(result['overrides'])}: mean accuracy of the last {last} "
           "evaluations (first step at >= 0.5)", "",
           "| variant | seconds | " + " | ".join(SHOWN) + " |", "|---" * (len(SHOWN) + 2) + "|"]
  for name, row in result["variants"].items():
    tail = {s: sum(acc for _, acc in result["curves"][name][s][-last:]) / last for s in SHOWN}
    cells = [f"{tail[s]:.2f} ({row['half'][s] or '-'})" for s in SHOWN]
    lines.append(f"| {name} | {row['seconds']:.0f} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  main()
