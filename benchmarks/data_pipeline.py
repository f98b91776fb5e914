"""Examples per second of the training data pipeline against those the paper-shape train step consumes, measured
side by side in one process.

    .venv/bin/python benchmarks/data_pipeline.py [--batches 300] [--step-runs 2] [--steps-per-s 10]

Pipeline: `data.stage_iterator(task, stage, B, 0)` as the training loop reads it (grain; a background thread
prepares the batches), each batch placed on the mesh by `sharding.put_batch`, for the depth_extrap paper preset
at curriculum stages 2, 20 and 40 (chains of up to 40 hops) and the systematicity paper preset (grain epochs of a
finite set, one stage). A stage's first batch is timed apart (the first reader of a stage builds its chain
pools). Beside it, the same batches read by grain without the thread (`sync`) and by two worker processes
(`mp_prefetch`, 2 workers).
Step: each paper preset's looped model's train step (R = 4) on its first-stage batches, timed after a compile and
a first step; and, as a stated assumption for an accelerator, --steps-per-s. The goal: the pipeline delivers
>= 20x the examples/s the step consumes.
"""
from __future__ import annotations

import argparse
import os
import time

import grain
import jax
from absl import flags

from looprec import data, experiment, sharding, train

STAGES = {"depth_extrap": (2, 20, 40), "systematicity": (2,)}


def parse():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batches", type=int, default=300, help="timed batches per stage and reader")
  parser.add_argument("--step-runs", type=int, default=2, help="timed train steps per preset (0: skip the steps)")
  parser.add_argument("--steps-per-s", type=float, default=10.0, help="the assumed accelerator step rate")
  return parser.parse_args()


def readers(task, stage: int, batch_size: int) -> dict:
  """name -> a fresh iterator over the stage's batches."""
  dataset = data.stage_dataset(task, stage, batch_size, 0)
  workers = grain.MultiprocessingOptions(num_workers=2, per_worker_buffer_size=4)
  return {"stage_iterator": lambda: data.stage_iterator(task, stage, batch_size, 0),
          "sync": lambda: iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))),
          "mp_prefetch": lambda: iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
                                      .mp_prefetch(workers))}


def pipeline_rate(make_iterator, batch_size: int, mesh, n: int) -> tuple[float, float]:
  """(seconds to the first batch, examples/s over the next n) of an iterator, its batches put on the mesh."""
  start = time.perf_counter()
  iterator = make_iterator()
  jax.block_until_ready(sharding.put_batch(next(iterator), mesh))
  first = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(n):
    jax.block_until_ready(sharding.put_batch(next(iterator), mesh))
  rate = n * batch_size / (time.perf_counter() - start)
  if hasattr(iterator, "close"):
    iterator.close()
  return first, rate


def step_rate(cfg, task, mesh, runs: int) -> float:
  """Examples/s of the looped model's train step at R = 4 on the task's first-stage batches."""
  model = cfg.build_model("looped", task.vocab.size)
  tx = train.make_optimizer(cfg.train)
  steps = train.Programs(model, tx, mesh, cfg.train.label_smoothing)
  batch = sharding.put_batch(next(data.stage_iterator(task, task.curriculum.first, cfg.train.batch_size, 0)), mesh)
  state = train.init_state(model, tx, jax.random.PRNGKey(0), batch["tokens"].shape[1], mesh)
  state, metrics = steps.step(state, batch, 4)  # compile and a first step
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(runs):
    state, metrics = steps.step(state, batch, 4)
  jax.block_until_ready(metrics)
  return runs * cfg.train.batch_size / (time.perf_counter() - start)


def main():
  args = parse()
  flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags, which no absl app parsed here
  mesh = sharding.make_mesh()
  print(f"load average {os.getloadavg()[0]:.1f}; goal: pipeline >= 20x the step's examples/s", flush=True)
  for name, stages in STAGES.items():
    _, cfg = experiment.resolve(experiment.load(name), "paper")
    start = time.perf_counter()
    task, b = data.make_task(cfg.data), cfg.train.batch_size
    build = time.perf_counter() - start
    assumed = args.steps_per_s * b
    step = step_rate(cfg, task, mesh, args.step_runs) if args.step_runs else float("nan")
    print(f"{name} paper, B={b}, task built in {build:.2f} s: train step (R=4) on this CPU {step:,.2f} "
          f"examples/s; assumed accelerator {args.steps_per_s:g} steps/s = {assumed:,.0f} examples/s", flush=True)
    for stage in stages:
      for reader, make_iterator in readers(task, stage, b).items():
        first, rate = pipeline_rate(make_iterator, b, mesh, args.batches)
        print(f"  stage {stage:2d} {reader:>14}: first batch {first:5.2f} s; {rate:8,.0f} examples/s = "
              f"{rate / step:8,.0f}x this CPU's step, {rate / assumed:5.1f}x the assumed step; 20x ahead of a step "
              f"up to {rate / (20 * b):5.1f} steps/s", flush=True)
  print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  main()
