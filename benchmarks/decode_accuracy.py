"""Path and final-entity accuracy of every cache policy on the generation task, MELT trained from the per-loop
model, and the KL of each policy's next-token distribution to the per-loop teacher's.

    .venv/bin/python benchmarks/decode_accuracy.py --hops 3      # 5.5 minutes on the shared 2-core machine
    .venv/bin/python benchmarks/decode_accuracy.py --steps 3000 --out runs/decode_accuracy.json

A looped model (d=64, 1 layer, R = --loops) trains on the generation task (`looprec.generation`: 16 entities,
4 relations, chains of 1..--hops hops, held-out chains by the depth task's split) with teacher forcing, then MELT
(`looprec.melt.train`) from it. melt decodes with the MELT student's params, the other policies with the
per-loop model's. Each policy decodes the held-out chains of hops 1..--hops + 2 greedily at R and
at 2R (looping more than in training); KL: mean over the written positions of KL(per_loop || policy) at R.
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import jax
import numpy as np

from looprec import decode, generation, melt, models
from looprec.config import ChainDataConfig, ModelConfig

POLICIES = ("per_loop", "first_loop", "last_loop", "cycle:2", "melt")


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--steps", type=int, default=1500, help="teacher-forced training steps")
  ap.add_argument("--melt-steps", type=int, default=150, help="steps of each MELT phase")
  ap.add_argument("--hops", type=int, default=4, help="deepest trained chain")
  ap.add_argument("--loops", type=int, default=3, help="R in training")
  ap.add_argument("--out", default=None, help="also write the results here as JSON")
  args = ap.parse_args()
  cfg = ChainDataConfig(n_entities=16, n_relations=4, seq_len=args.hops + 4, n_eval=128)
  cfg = dataclasses.replace(cfg, curriculum=dataclasses.replace(cfg.curriculum, first_hop=1, last_hop=args.hops))
  task = generation.GenerationTask(cfg)
  model = models.build(ModelConfig(d_model=64, n_heads=4, n_layers=1, max_positions=2 * args.hops + 8), task.vocab.size)
  teacher, loss = generation.train(model, model.init(jax.random.PRNGKey(0), 8), task, args.loops, args.steps, 64, 3e-3)
  student, kls = melt.train(model, teacher, task, args.loops, args.melt_steps, args.melt_steps, 64, lr=1e-3)
  out = {"train_loss": loss, "melt_kl_last": kls[-1], "policies": {}}
  for policy in POLICIES:
    params = student if policy == "melt" else teacher  # the MELT student's weights are fine-tuned too
    rows = out["policies"][policy] = {}
    for hop in range(1, args.hops + 3):
      ex = task.eval_split(hop)
      rows[hop] = {f"R={r}": generation.path_accuracy(decode.generate(model, params, ex["prompt"], hop, r, policy),
                                                      ex["path"]) for r in (args.loops, 2 * args.loops)}
      rows[hop]["kl"] = decode.kl_to_teacher(model, teacher, params, policy, ex["prompt"], ex["path"], args.loops)
  print(f"| policy | hop | path R={args.loops} | final R={args.loops} | path R={2 * args.loops} | "
        f"final R={2 * args.loops} | KL to per_loop |")
  print("|---|---|---|---|---|---|---|")
  for policy, rows in out["policies"].items():
    for hop, row in rows.items():
      a, b = row[f"R={args.loops}"], row[f"R={2 * args.loops}"]
      print(f"| {policy} | {hop} | {a['path']:.3f} | {a['final']:.3f} | {b['path']:.3f} | {b['final']:.3f} | "
            f"{row['kl']:.4f} |")
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
