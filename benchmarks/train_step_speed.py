"""Train-step throughput of the cpu preset's looped model, measured side by side in one process.

    .venv/bin/python benchmarks/train_step_speed.py [--steps 300]

Compares batches padded to data.seq_len (12 tokens) with batches trimmed to the deepest trained query
(5 tokens, what the pipeline does), at R = 4. Prints steps/s for each and their ratio.
"""
from __future__ import annotations

import argparse
import functools
import time

import jax
import numpy as np

from experiments import depth_extrap
from looprec import data, sharding, train
from looprec import models


def steps_per_second(step_fn, state, batch, n: int):
  """(steps per second of step_fn(state, batch) -> (state, metrics) after a first (compiling) step, the state)."""
  state, m = step_fn(state, batch)  # compile
  jax.block_until_ready(m)
  start = time.perf_counter()
  for _ in range(n):
    state, m = step_fn(state, batch)
  jax.block_until_ready(m)
  return n / (time.perf_counter() - start), state


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--loops", type=int, default=4)
  args = parser.parse_args()
  cfg = depth_extrap.cpu()
  task = data.make_task(cfg.data)
  mesh = sharding.make_mesh()
  model = models.build(cfg.model, task.vocab.size)
  tx = train.make_optimizer(cfg.train)
  step_fn = functools.partial(train.Programs(model, tx, mesh, 0.0).step, n_loops=args.loops)
  ids = np.arange(cfg.train.batch_size)
  k = cfg.data.curriculum.last_hop
  batches = {"padded to seq_len": task.train_examples(k, ids, pad_hop=cfg.data.fitting_hops()),
             "trimmed": task.train_examples(k, ids, pad_hop=k)}
  rates = {}
  for name, batch in batches.items():
    state = train.init_state(model, tx, jax.random.PRNGKey(0), batch["tokens"].shape[1], mesh)
    rates[name], _ = steps_per_second(step_fn, state, sharding.put_batch(batch, mesh), args.steps)
    print(f"{name:>18}: {batch['tokens'].shape[1]:2d} tokens, {rates[name]:6.1f} steps/s")
  print(f"ratio trimmed / padded: {rates['trimmed'] / rates['padded to seq_len']:.2f}")


if __name__ == "__main__":
  main()
