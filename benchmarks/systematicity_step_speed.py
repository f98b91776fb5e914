"""Train-step throughput of systematicity models on this machine, side by side in one process.

    .venv/bin/python benchmarks/systematicity_step_speed.py [--steps 200]

The cpu preset's data and model width, for block depths L, loop counts R and batch sizes B: the preset's pair
(L=1 R=4 against L=4 R=1, batch 256) and the issue's suggestion (L=2 R=4 against L=8 R=1) at batch 256 and 128.
Prints steps/s and examples x layer applications per second, relative to the preset's looped model.
"""
from __future__ import annotations

import argparse
import functools
import dataclasses

import jax

from experiments import systematicity
from looprec import data, sharding, train
from looprec import models
from train_step_speed import steps_per_second

SETTINGS = [(1, 4, 256), (4, 1, 256), (2, 4, 256), (8, 1, 256), (2, 4, 128), (8, 1, 128)]  # (L, R, B)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=200)
  args = parser.parse_args()
  cfg = systematicity.cpu()
  task = data.make_task(cfg.data)
  mesh = sharding.make_mesh()
  tx = train.make_optimizer(cfg.train)
  base = None
  for n_layers, loops, batch_size in SETTINGS:
    model = models.build(dataclasses.replace(cfg.model, n_layers=n_layers), task.vocab.size)
    step_fn = functools.partial(train.Programs(model, tx, mesh, cfg.train.label_smoothing).step, n_loops=loops)
    batch = sharding.put_batch(task.train_examples(2, range(batch_size)), mesh)
    state = train.init_state(model, tx, jax.random.PRNGKey(0), batch["tokens"].shape[1], mesh)
    rate, _ = steps_per_second(step_fn, state, batch, args.steps)
    work = rate * batch_size * n_layers * loops
    base = base or work
    print(f"L={n_layers} R={loops} B={batch_size:3d}: {rate:6.1f} steps/s, {work / 1e3:7.1f}k example-layers/s "
          f"({work / base:.2f} of the first)", flush=True)


if __name__ == "__main__":
  main()
