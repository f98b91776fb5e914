"""The paper preset's train step on one accelerator: compile time, steps/s, examples/s, MFU, peak memory, bf16 vs fp32.

    .venv/bin/python benchmarks/accelerator_check.py            # on one GPU or TPU (<= 5 minutes)
    .venv/bin/python benchmarks/accelerator_check.py --reduced  # a small model, to check the script on CPU

The model and batch are the paper preset's (d=768, 12 heads, L=4, NoPE, zero-init output projections, B=128,
T=22: the 20-hop query with the answer at the next position), at R=4 (the mean of clip(Poisson(4), 2, 8)), in one
program compiled for R_max=8 (train.loop_programs=one). MFU as training reports it (`looprec.throughput`): the
step's FLOPs from XLA's cost analysis of the step with its loop unrolled, over the step time and the chip's dense
peak from the table in `looprec/throughput.py` (on CPU a measured large matmul).
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from looprec import models, sharding, throughput, train
from looprec.config import ModelConfig, TrainConfig

def check(dtype: str, args) -> dict:
  d, h, n_layers = (128, 4, 2) if args.reduced else (768, 12, 4)
  b, t, vocab, n_loops = (16, 22, 213, 4) if args.reduced else (128, 22, 213, 4)
  cfg = ModelConfig(d_model=d, n_heads=h, n_layers=n_layers, pos_emb="none", injection="none", out_init_scale=0.0,
                    dtype=dtype)
  model = models.build(cfg, vocab)
  tx = train.make_optimizer(TrainConfig(lr=1e-4, warmup_steps=2000, grad_clip=0.0))
  mesh = sharding.make_mesh()
  r = np.random.default_rng(0)
  batch = sharding.put_batch({"tokens": r.integers(1, vocab, (b, t)).astype(np.int32),
                              "read_pos": np.full(b, t - 1, np.int32),
                              "target": r.integers(1, vocab, b).astype(np.int32)}, mesh)
  state = train.init_state(model, tx, jax.random.PRNGKey(0), t, mesh)
  steps = train.OneProgram(model, tx, mesh, 0.0, max_loops=8)
  start = time.perf_counter()
  compiled = steps.program(train.train_step, 8, True, state).lower(state, batch, jnp.int32(n_loops)).compile()
  compile_s = time.perf_counter() - start
  mem = compiled.memory_analysis()
  state, m = steps.step(state, batch, n_loops)
  jax.block_until_ready(m)
  start = time.perf_counter()
  for _ in range(args.steps):
    state, m = steps.step(state, batch, n_loops)
  jax.block_until_ready(m)
  seconds = (time.perf_counter() - start) / args.steps
  peak = throughput.peak_flops(dtype)
  flops = steps.flops(n_loops, state, batch)
  stats = jax.devices()[0].memory_stats() or {}
  return {"dtype": dtype, "compile_s": compile_s, "steps_per_s": 1 / seconds, "examples_per_s": b / seconds,
          "mfu": flops / seconds / peak if flops and peak else float("nan"), "peak_tflops": (peak or 0) / 1e12,
          "compiled_peak_mib": (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
                                + mem.temp_size_in_bytes) / 2**20,
          "device_peak_mib": stats.get("peak_bytes_in_use", float("nan")) / 2**20, "loss": float(m["loss"])}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--reduced", action="store_true", help="d=128, L=2, B=16: to check the script on a CPU")
  args = parser.parse_args()
  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"{'reduced' if args.reduced else 'paper'} shape, R=4 in a program for R_max=8, {args.steps} steps")
  for dtype in ("bfloat16", "float32"):
    r = check(dtype, args)
    print(f"{dtype:>9}: compile {r['compile_s']:.1f} s, {r['steps_per_s']:.2f} steps/s, "
          f"{r['examples_per_s']:.0f} examples/s, MFU {100 * r['mfu']:.1f}% (of {r['peak_tflops']:.0f} TFLOP/s), "
          f"compiled peak {r['compiled_peak_mib']:.0f} MiB, device peak {r['device_peak_mib']:.0f} MiB, "
          f"final loss {r['loss']:.3f}")


if __name__ == "__main__":
  main()
