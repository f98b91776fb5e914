"""What two deviations of the systematicity cpu preset from the official code change: the embedding init
(official: nn.Embedding's N(0, 1); cpu: N(0, 0.02)) and where an atomic fact's answer is read (official: rows
padded to the batch's longest, answer at the last position, so atomic facts train at the pad after their
relation; cpu: at the relation token). Looped and vanilla models, same budget and seed, side by side in one run.

    .venv/bin/python benchmarks/systematicity_recipe.py                     # 8,000 steps per model and variant
    .venv/bin/python benchmarks/systematicity_recipe.py train.steps=4000

Besides every probe split at the training R it reads the atomic probes at the other position too
(`id_atomic@pad`, `ood_atomic@pad`: read at the pad after the relation, where batch_last trains them). Writes
runs/systematicity_recipe/<time>/recipe.json and recipe.md.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from experiments import systematicity
from looprec import checkpoint, config as C, data, eval as evaluation, runs, sharding

VARIANTS = {
    "cpu preset (N(0, 0.02), answer at the relation)": [],
    "N(0, 1) embeddings": ["model.embed_init_std=1.0"],
    "official answer position (batch_last)": ["data.answer_at=batch_last"],
}
SHOWN = ("id_atomic", "ood_atomic", "id_atomic@pad", "ood_atomic@pad", "test_inferred_iid", "test_inferred_ood",
         "test_inferred_ood_first", "test_inferred_ood_second")


def at_pad(examples: dict) -> dict:
  """Atomic probes read one position later: the pad after the relation token."""
  return {**examples, "read_pos": examples["read_pos"] + 1}


def main():
  overrides = ["train.steps=8000", "train.eval_every=500", "train.checkpoint_every=8000", *sys.argv[1:]]
  base = C.override(systematicity.cpu(), overrides)
  out_dir = runs.make_run_dir("runs", "systematicity_recipe", "cpu")
  mesh = sharding.make_mesh()
  table = {}
  for name, extra in VARIANTS.items():
    cfg = C.override(base, extra)
    systematicity.validate(cfg)
    run_dir = os.path.join(out_dir, name.split(" (")[0].replace(" ", "_"))
    os.makedirs(run_dir, exist_ok=True)
    out = systematicity.run(cfg, run_dir)
    task = data.make_task(cfg.data)
    table[name] = {"overrides": extra}
    for model_name, m in out["models"].items():
      params, _ = checkpoint.restore_params(os.path.join(run_dir, "checkpoints", model_name))
      model, loops = cfg.build_model(model_name, task.vocab.size), cfg.models[model_name].rec.max_loops
      final = dict(m["final"])
      for split in ("id_atomic", "ood_atomic"):
        final[f"{split}@pad"] = evaluation.accuracy(model, params, at_pad(task.probes[split]), loops, mesh, 1024)
      curves = out["curves"][model_name]
      tail = {s: float(np.mean([a for _, a in curves[s][-4:]])) for s in curves}
      table[name][model_name] = {"seconds": m["train_seconds"], "final": final, "last4": tail,
                                 "half": systematicity.stage_steps(curves, 0.5)}
      print(f"{name} / {model_name}: {m['train_seconds']:.0f} s, OOD {final['test_inferred_ood']:.2f}", flush=True)
  result = {"overrides": overrides, "variants": table}
  runs.write_json(os.path.join(out_dir, "recipe.json"), result)
  text = markdown(result)
  with open(os.path.join(out_dir, "recipe.md"), "w") as f:
    f.write(text)
  print(text)
  print(f"results: {os.path.join(out_dir, 'recipe.json')}")


def markdown(result: dict) -> str:
  """Per variant and model: accuracy after the last step (the mean of the last four evaluations in brackets
  where it was tracked during training)."""
  lines = [f"cpu preset, {' '.join(result['overrides'])}: accuracy at the training R after the last step (mean of "
           "the last 4 evaluations)", "", "| variant | model | seconds | " + " | ".join(SHOWN) + " |",
           "|---" * (len(SHOWN) + 3) + "|"]
  for name, row in result["variants"].items():
    for model_name in ("looped", "vanilla"):
      m = row[model_name]
      cells = [f"{m['final'][s]:.2f}" + (f" ({m['last4'][s]:.2f})" if s in m["last4"] else "") for s in SHOWN]
      lines.append(f"| {name} | {model_name} | {m['seconds']:.0f} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  main()
