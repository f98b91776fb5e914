"""Compile time, step time and compiled memory of the train step against depth, at the paper preset's shape.

    .venv/bin/python benchmarks/depth_programs.py [--part compile,memory,step,cache] [--d-model 768 ...]

compile: seconds to compile the step for dynamic recurrence R = clip(Poisson(4), 2, 8): one program per R
  (train.loop_programs=per_r: the 7 programs R = 2..8 that training meets) against one program to R_max
  (loop_programs=one) at R_max = 2, 8 and 64.
memory: compiled peak memory (arguments + outputs + temporaries, from `memory_analysis()`) and temporaries at
  R = 4, 16, 64 with backprop through all loops (off), per-loop remat (train.remat=loop) and truncated backprop
  through the last 4 loops (train.backprop_loops=4).
step: median ms/step at R = 4 of the per-R program and of the one program compiled for R_max = 8.
cache: compile time of the one-program step in two fresh processes sharing a persistent compilation cache folder
  (what a repeated or resumed run pays).
The paper's model: d=768, 12 heads, L=4, NoPE, bf16 matmuls, B=128, T=22 (a 20-hop query, the paper preset's
longest trained width with the answer read at the next position).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from looprec import loop, models, sharding, train
from looprec.config import ModelConfig, TrainConfig


def parse():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--part", default="compile,memory,step,cache")
  parser.add_argument("--d-model", type=int, default=768)
  parser.add_argument("--n-heads", type=int, default=12)
  parser.add_argument("--n-layers", type=int, default=4)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--seq-len", type=int, default=22)
  parser.add_argument("--steps", type=int, default=3, help="timed steps per program and round (step part)")
  parser.add_argument("--cache-child", default="", help=argparse.SUPPRESS)
  return parser.parse_args()


class Setup:
  def __init__(self, args):
    cfg = ModelConfig(d_model=args.d_model, n_heads=args.n_heads, n_layers=args.n_layers, pos_emb="none",
                      injection="none", out_init_scale=0.0, dtype="bfloat16")
    self.model = models.build(cfg, 213)
    self.tx = train.make_optimizer(TrainConfig(lr=1e-4, warmup_steps=2000, grad_clip=0.0))
    self.mesh = sharding.make_mesh()
    r = np.random.default_rng(0)
    tokens = r.integers(1, 213, (args.batch, args.seq_len)).astype(np.int32)
    self.batch = sharding.put_batch({"tokens": tokens, "read_pos": np.full(args.batch, args.seq_len - 1, np.int32),
                                     "target": r.integers(1, 213, args.batch).astype(np.int32)}, self.mesh)
    self.state = train.init_state(self.model, self.tx, jax.random.PRNGKey(1), args.seq_len, self.mesh)

  def steps(self, scan=loop.PLAIN, max_loops=0):
    """The per_r programs, or (max_loops > 0) the one program to R_max = max_loops."""
    args = (self.model, self.tx, self.mesh, 0.0, scan)
    return train.OneProgram(*args, max_loops=max_loops) if max_loops else train.Programs(*args)

  def compiled(self, n_loops, scan=loop.PLAIN, max_loops=0):
    """(compiled step for R = n_loops, seconds to lower and compile it)."""
    start = time.perf_counter()
    jitted = self.steps(scan, max_loops).program(train.train_step, max_loops or n_loops, bool(max_loops), self.state)
    extra = (jax.numpy.int32(n_loops),) if max_loops else ()
    out = jitted.lower(self.state, self.batch, *extra).compile()
    return out, time.perf_counter() - start


def part_compile(s: Setup):
  per_r = sum(s.compiled(r)[1] for r in range(2, 9))
  print(f"compile, one program per R = 2..8 (7 programs): {per_r:6.1f} s")
  one = {}
  for r_max in (2, 8, 64):
    one[r_max] = s.compiled(2, max_loops=r_max)[1]
    print(f"compile, one program to R_max = {r_max:2d}:          {one[r_max]:6.1f} s")
  print(f"R_max 64 / R_max 2: {one[64] / one[2]:.2f}x;  per-R programs (2..8) / one program (R_max 8): "
        f"{per_r / one[8]:.2f}x")


def part_memory(s: Setup):
  modes = {"off": loop.PLAIN, "remat=loop": loop.Scan(remat="loop"), "backprop_loops=4": loop.Scan(backprop_loops=4)}
  print(f"{'compiled memory, MiB':>22} | " + " | ".join(f"R={r:<2d} peak   temp" for r in (4, 16, 64)))
  for name, bp in modes.items():
    cells = []
    for r in (4, 16, 64):
      m = s.compiled(r, bp)[0].memory_analysis()
      peak = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
      cells.append(f"{peak / 2**20:7.0f} {m.temp_size_in_bytes / 2**20:6.0f}")
    print(f"{name:>22} | " + " | ".join(cells))


def part_step(s: Setup, n: int):
  fns = {"per-R program, R=4": s.steps().step, "one program (R_max=8), R=4": s.steps(max_loops=8).step}
  holder = {"state": s.state}

  def run(fn):
    for _ in range(n):
      holder["state"], m = fn(holder["state"], s.batch, 4)
    jax.block_until_ready(m)

  for fn in fns.values():
    run(fn)
  times = {k: [] for k in fns}
  for _ in range(3):
    for k, fn in fns.items():
      start = time.perf_counter()
      run(fn)
      times[k].append((time.perf_counter() - start) / n * 1e3)
  for k, v in times.items():
    print(f"step, {k:>28}: {statistics.median(v):8.1f} ms")


def part_cache(argv):
  with tempfile.TemporaryDirectory() as folder:
    for attempt in ("first run (empty cache)", "second identical run"):
      out = subprocess.run([sys.executable, __file__, *argv, "--cache-child", folder], capture_output=True,
                           text=True, check=True, env={**os.environ, "LOOPREC_CACHE": folder})
      print(f"cache, {attempt:>24}: {out.stdout.strip()}")


def main():
  args = parse()
  if args.cache_child:
    from looprec import compile_cache  # pylint: disable=import-outside-toplevel
    compile_cache.enable()
    start = time.perf_counter()
    s = Setup(args)
    _, seconds = s.compiled(4, max_loops=8)
    print(f"compile {seconds:.1f} s, setup + compile {time.perf_counter() - start:.1f} s")
    return
  s = Setup(args)
  parts = args.part.split(",")
  print(f"d={args.d_model} heads={args.n_heads} L={args.n_layers} B={args.batch} T={args.seq_len}, "
        f"load average {os.getloadavg()[0]:.1f}")
  if "compile" in parts:
    part_compile(s)
  if "memory" in parts:
    part_memory(s)
  if "step" in parts:
    part_step(s, args.steps)
  if "cache" in parts:
    part_cache([a for a in sys.argv[1:]])
  print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  main()
