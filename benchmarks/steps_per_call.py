"""Time per training step with one step per compiled call against K steps per call (train.steps_per_call),
side by side in one process, on the depth_extrap cpu preset's looped model (R drawn from 2..4 as it trains).

    .venv/bin/python benchmarks/steps_per_call.py [--k 25] [--calls 20] [--rounds 3]

Each round runs the same K x calls steps both ways from the same state, after both programs are compiled (their
compile times are printed once); it prints ms per step per round and the median ratio. Both ways give bitwise the
same parameters (tests/test_depth.py), which the script also checks.
"""
from __future__ import annotations

import argparse
import statistics
import time

import chex
import jax
import numpy as np

from experiments import depth_extrap
from looprec import data, models, sharding, train


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--k", type=int, default=25)
  parser.add_argument("--calls", type=int, default=20)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  cfg = depth_extrap.cpu()
  task = data.make_task(cfg.data)
  mesh = sharding.make_mesh()
  model = models.build(cfg.model, task.vocab.size)
  tx = train.make_optimizer(cfg.train)
  rec = cfg.models["looped"].recurrence
  lo, hi = 2, 4  # the cpu preset's looped model draws R from 2..4 (recurrence dynamic:4,2,4)
  assert rec == f"dynamic:{hi},{lo},{hi}", rec
  programs = train.make_programs(cfg.train, model, tx, mesh, max_loops=hi, min_loops=lo)
  k, size = cfg.data.curriculum.last_hop, cfg.train.batch_size
  batches = [task.train_examples(k, np.arange(i * size, (i + 1) * size), pad_hop=k) for i in range(args.k)]
  loops = [int(r) for r in np.random.default_rng(0).integers(lo, hi + 1, args.k)]
  stacked = sharding.put_batches(batches, mesh)
  one = [sharding.put_batch(b, mesh) for b in batches]
  width = batches[0]["tokens"].shape[1]

  def one_per_call(state):
    for _ in range(args.calls):
      for b, r in zip(one, loops):
        state, m = programs.step(state, b, r)
    return state, m

  def k_per_call(state):
    for _ in range(args.calls):
      state, m = programs.steps(state, stacked, loops)
    return state, m

  ways = {"1 step per call": one_per_call, f"{args.k} steps per call": k_per_call}
  fresh = lambda: train.init_state(model, tx, jax.random.PRNGKey(0), width, mesh)
  for name, way in ways.items():  # compile (the first call of each program), timed
    start = time.perf_counter()
    jax.block_until_ready(way(fresh()))
    print(f"{name}: first {args.k * args.calls} steps incl. compile {time.perf_counter() - start:.1f} s")
  ms = {name: [] for name in ways}
  params = {}
  for _ in range(args.rounds):
    for name, way in ways.items():
      state = fresh()
      jax.block_until_ready(state)
      start = time.perf_counter()
      state, m = way(state)
      jax.block_until_ready(m)
      ms[name].append(1e3 * (time.perf_counter() - start) / (args.k * args.calls))
      params[name] = jax.device_get(state.params)
  chex.assert_trees_all_equal(*params.values())
  for name, values in ms.items():
    print(f"{name:>20}: ms/step per round " + ", ".join(f"{v:.2f}" for v in values))
  base, multi = (statistics.median(v) for v in ms.values())
  print(f"median ratio (1 step per call) / ({args.k} steps per call): {base / multi:.2f}  "
        f"(> 1: several steps per call is faster), {jax.devices()[0].platform}, width {width} tokens")


if __name__ == "__main__":
  main()
