"""Examples per second of the training data pipeline against those the paper-shape train step consumes, measured
side by side in one process.

    .venv/bin/python benchmarks/data_pipeline.py [--batches 300] [--step-runs 2] [--steps-per-s 10]

Pipeline: `data.stage_iterator(task, stage, B, 0)` as the training loop reads it (a grain iterator whose batches
a background thread prepares), each batch placed on the mesh by `sharding.put_batch`, for the depth_extrap paper
preset at curriculum stages 2, 20 and 40 (chains of up to 40 hops) and the systematicity paper preset (grain
epochs of a finite set, one stage). A stage's first batch (it builds the stage's chain pools) is timed apart.
Step: each paper preset's looped model's train step (R = 4) on that pipeline's batches, after a compile and a
first step; and, as a stated assumption for an accelerator, a step rate of --steps-per-s. The goal: the pipeline
delivers >= 20x the examples/s the step consumes.
"""
from __future__ import annotations

import argparse
import os
import time

import jax

from looprec import data, experiment, sharding, train

STAGES = {"depth_extrap": (2, 20, 40), "systematicity": (2,)}


def parse():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batches", type=int, default=300, help="timed batches per stage")
  parser.add_argument("--step-runs", type=int, default=2, help="timed train steps per preset (0: skip the steps)")
  parser.add_argument("--steps-per-s", type=float, default=10.0, help="the assumed accelerator step rate")
  return parser.parse_args()


def pipeline_rate(task, stage: int, batch_size: int, mesh, n: int) -> tuple[float, float]:
  """(seconds to the first batch, examples/s over the next n) of the training iterator, batches on the mesh."""
  start = time.perf_counter()
  iterator = data.stage_iterator(task, stage, batch_size, 0)
  jax.block_until_ready(sharding.put_batch(next(iterator), mesh))
  first = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(n):
    jax.block_until_ready(sharding.put_batch(next(iterator), mesh))
  return first, n * batch_size / (time.perf_counter() - start)


def step_rate(cfg, task, mesh, runs: int) -> float:
  """Examples/s of the looped model's train step at R = 4 on the task's first-stage batches."""
  model = cfg.build_model("looped", task.vocab.size)
  tx = train.make_optimizer(cfg.train)
  steps = train.StepFunctions(model, tx, mesh, cfg.train.label_smoothing)(4)
  batch = sharding.put_batch(next(data.stage_iterator(task, task.curriculum.first, cfg.train.batch_size, 0)), mesh)
  state = train.init_state(model, tx, jax.random.PRNGKey(0), batch["tokens"].shape[1], mesh)
  key = jax.random.PRNGKey(1)
  state, metrics, _ = steps(state, batch, key, 0, train.HEALTHY)  # compile and a first step
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for i in range(runs):
    state, metrics, _ = steps(state, batch, key, i + 1, train.HEALTHY)
  jax.block_until_ready(metrics)
  return runs * cfg.train.batch_size / (time.perf_counter() - start)


def main():
  args = parse()
  mesh = sharding.make_mesh()
  print(f"load average {os.getloadavg()[0]:.1f}; goal: pipeline >= 20x the step's examples/s", flush=True)
  for name, stages in STAGES.items():
    _, cfg = experiment.resolve(experiment.load(name), "paper")
    task, b = data.make_task(cfg.data), cfg.train.batch_size
    assumed = args.steps_per_s * b
    step = step_rate(cfg, task, mesh, args.step_runs) if args.step_runs else float("nan")
    print(f"{name} paper, B={b}: train step (R=4) on this CPU {step:,.1f} examples/s; assumed accelerator "
          f"{args.steps_per_s:g} steps/s = {assumed:,.0f} examples/s", flush=True)
    for stage in stages:
      first, rate = pipeline_rate(task, stage, b, mesh, args.batches)
      print(f"  stage {stage:2d}: first batch {first:6.2f} s; pipeline {rate:9,.0f} examples/s = "
            f"{rate / step:8,.0f}x this CPU's step, {rate / assumed:6.1f}x the assumed step; 20x ahead of a step up "
            f"to {rate / (20 * b):6.1f} steps/s", flush=True)
  print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  main()
