"""Inference-time depth, measured: the one-compile loop sweep against one compile per R, and adaptive halting
against always running the cap.

    .venv/bin/python benchmarks/inference_depth.py [--run runs/depth_extrap/latest] [--model looped]
                                                   [--max-loops 20] [--cap 16] [--repeats 5]

Loads a trained model of a run folder (`make experiment NAME=depth_extrap` first) and its eval splits.
Sweep: accuracy[split][R] for R = 1..max_loops from one traced scan (`looprec.sweep`) vs `answer_logits` jitted
with a static R for each R, both from a cold start (compiles included). Halting: every policy's while_loop vs a
fixed R = cap forward on the same splits, both compiled beforehand (best of --repeats). Prints times and ratios.
"""
from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from jax import monitoring

from looprec import analysis, experiment, halting, sharding


def load(run_dir: str, name: str):
  run = experiment.load_run(run_dir)
  splits = run.module.eval_splits(run.task, run.cfg.eval.max_hop)
  return run.model(name), run.params[name], splits


def per_r_compiles(model, params, splits, max_loops: int) -> dict:
  """The baseline: one jitted program per R (static n_loops)."""
  fn = jax.jit(model.answer_logits, static_argnames="n_loops")
  return {name: {str(r): float(np.mean(np.argmax(fn(params, ex["tokens"], ex["read_pos"], n_loops=r), -1)
                                       == ex["target"])) for r in range(1, max_loops + 1)}
          for name, ex in splits.items()}


def best_time(fn, repeats: int) -> float:
  jax.block_until_ready(fn())  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return min(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run", default="runs/depth_extrap/latest")
  parser.add_argument("--model", default="looped")
  parser.add_argument("--max-loops", type=int, default=20)
  parser.add_argument("--cap", type=int, default=halting.DEFAULT_CAP)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  model, params, splits = load(args.run, args.model)
  mesh = sharding.make_mesh()
  n = sum(len(ex["target"]) for ex in splits.values())
  print(f"{args.run} model {args.model}: {len(splits)} splits, {n} examples")

  compiles = []
  monitoring.register_event_duration_secs_listener(
      lambda event, *_, **__: compiles.append(1) if event == "/jax/core/compile/backend_compile_duration" else None)
  start = time.perf_counter()
  one = analysis.sweep(model, params, splits, args.max_loops, mesh)
  t_one, c_one = time.perf_counter() - start, len(compiles)
  start = time.perf_counter()
  many = per_r_compiles(model, params, splits, args.max_loops)
  t_many, c_many = time.perf_counter() - start, len(compiles) - c_one
  diff = max(abs(one[s][r] - many[s][r]) for s in one for r in one[s])
  print(f"sweep R = 1..{args.max_loops} (splits differ in width, one program per width): one scan for all R "
        f"{t_one:.2f} s ({c_one} compiles), one program per R {t_many:.2f} s ({c_many} compiles), "
        f"ratio {t_many / t_one:.2f}x; largest accuracy difference {diff:.4f}")

  fixed_fn = jax.jit(model.answer_logits, static_argnames="n_loops")
  t_fixed = best_time(lambda: [fixed_fn(params, ex["tokens"], ex["read_pos"], n_loops=args.cap)
                               for ex in splits.values()], args.repeats)
  print(f"fixed R = {args.cap}: {t_fixed * 1e3:.1f} ms for all splits")
  for name in halting.applicable(model):
    pol = halting.policy(name)
    got = {}

    def run_all(pol=pol, got=got):
      got.update({s: analysis.halt_examples(model, params, ex, pol, args.cap, mesh) for s, ex in splits.items()})

    t_halt = best_time(run_all, args.repeats)
    loops = np.concatenate([g["loops"] for g in got.values()])
    executed = np.mean([g["executed"].mean() for g in got.values()])
    acc = np.mean(np.concatenate([g["answer"] == splits[s]["target"] for s, g in got.items()]))
    print(f"halting {pol!s:36s} {t_halt * 1e3:7.1f} ms, speed-up vs fixed R = {args.cap}: "
          f"{t_fixed / t_halt:.2f}x (mean loops {loops.mean():.2f}, loops run per batch {executed:.2f}, "
          f"accuracy {acc:.3f})")


if __name__ == "__main__":
  main()
