"""The paper's halting rule with its absolute entropy bound (3.0 nats) against the bound relative to the answer set
(kl_entropy_rel: 0.566 x ln |entities|, 1.70 nats on the cpu graph of 20 entities), on the cpu depth preset's looped
model trained 8,000 steps (at most 14 minutes). Prints accuracy and mean loops per split and policy, and the best
fixed-R accuracy per split; writes halting_summary.json into the given folder.

    .venv/bin/python benchmarks/halting_transfer.py runs/halting_transfer
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys

from experiments import depth_extrap
from looprec import experiment


def main(run_dir: str):
  _, cfg = experiment.resolve(depth_extrap, "cpu", ["train.steps=8000", "train.max_minutes=14"])
  cfg = dataclasses.replace(cfg, models={"looped": cfg.models["looped"]})
  os.makedirs(run_dir, exist_ok=True)
  out = depth_extrap.run(cfg, run_dir)
  for policy, table in out["halting"]["looped"].items():
    print(policy, {s: (round(r["accuracy"], 2), round(r["mean_loops"], 1)) for s, r in table.items()}, flush=True)
  accuracy = out["models"]["looped"]["accuracy"]
  print("best fixed R:", {s: max(a.values()) for s, a in accuracy.items()}, "steps", out["models"]["looped"]["steps"])
  with open(os.path.join(run_dir, "halting_summary.json"), "w") as f:
    json.dump(out["halting"], f, indent=1)


if __name__ == "__main__":
  main(sys.argv[1])
