"""The paper preset's train step on one accelerator: compile time, steps/s, examples/s, MFU, peak memory, bf16 vs fp32.

    .venv/bin/python benchmarks/accelerator_check.py            # on one GPU or TPU (<= 5 minutes)
    .venv/bin/python benchmarks/accelerator_check.py --reduced  # a small model, to check the script on CPU

The model and batch are the paper preset's (d=768, 12 heads, L=4, NoPE, zero-init output projections, B=128,
T=22: the 20-hop query with the answer at the next position), at R=4 (the mean of clip(Poisson(4), 2, 8)), in one
program compiled for R_max=8 (train.loop_programs=one). MFU = model FLOPs per step / step time / device peak:
model FLOPs are counted analytically (3 x the forward matmuls: 24 d^2 + 4 T d per token and layer application,
plus the head at the answer position), because XLA's cost analysis counts a scan body once whatever R is. Peaks
(dense bf16 / fp32 FLOP/s) come from the vendors' data sheets; on CPU the peak is a measured large matmul.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from looprec import models, sharding, train
from looprec.config import ModelConfig, TrainConfig

# device_kind substring -> (bf16, fp32) dense peak FLOP/s per chip; fp32 on GPUs is the non-tensor-core rate.
PEAKS = {"TPU v4": (275e12, 275e12 / 2), "TPU v5 lite": (197e12, 197e12 / 2), "TPU v5e": (197e12, 197e12 / 2),
         "TPU v5p": (459e12, 459e12 / 2), "TPU v5": (459e12, 459e12 / 2), "TPU v6": (918e12, 918e12 / 2),
         "A100": (312e12, 19.5e12), "H100": (989e12, 67e12), "H200": (989e12, 67e12)}


def device_peak(dtype) -> tuple[float, str]:
  dev = jax.devices()[0]
  for name, (bf16, fp32) in PEAKS.items():
    if name.lower() in dev.device_kind.lower():
      return (bf16 if dtype == "bfloat16" else fp32), f"{dev.device_kind} data sheet"
  n = 2048  # CPU or an unlisted device: a measured matmul peak
  a = jnp.ones((n, n), jnp.bfloat16 if dtype == "bfloat16" else jnp.float32)
  mm = jax.jit(lambda x: x @ x)
  mm(a).block_until_ready()
  start = time.perf_counter()
  for _ in range(5):
    out = mm(a)
  out.block_until_ready()
  return 5 * 2 * n ** 3 / (time.perf_counter() - start), f"measured {n}x{n} matmul on {dev.device_kind}"


def model_flops(cfg: ModelConfig, n_loops: int, batch: int, seq_len: int, vocab: int) -> float:
  """Forward + backward FLOPs of one train step (matmuls only)."""
  d, f = cfg.d_model, cfg.d_ff or 4 * cfg.d_model
  per_token_layer = 2 * (4 * d * d + 2 * d * f) + 2 * 2 * seq_len * d
  return 3 * (per_token_layer * cfg.n_layers * n_loops * batch * seq_len + 2 * d * vocab * batch)


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
  steps = train.StepFunctions(model, tx, mesh, 0.0, max_loops=8)
  start = time.perf_counter()
  compiled = steps.compiled(8, True, False, state).lower(state, batch, jax.random.PRNGKey(1), 0, train.HEALTHY,
                                                         jnp.int32(n_loops)).compile()
  compile_s = time.perf_counter() - start
  mem = compiled.memory_analysis()
  step = steps(n_loops)
  state, m, _ = step(state, batch, jax.random.PRNGKey(1), 0, train.HEALTHY)
  jax.block_until_ready(m)
  start = time.perf_counter()
  for i in range(args.steps):
    state, m, _ = step(state, batch, jax.random.PRNGKey(i), i, train.HEALTHY)
  jax.block_until_ready(m)
  seconds = (time.perf_counter() - start) / args.steps
  peak, source = device_peak(dtype)
  stats = jax.devices()[0].memory_stats() or {}
  return {"dtype": dtype, "compile_s": compile_s, "steps_per_s": 1 / seconds, "examples_per_s": b / seconds,
          "mfu": model_flops(cfg, n_loops, b, t, vocab) / seconds / peak, "peak_source": source,
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
          f"{r['examples_per_s']:.0f} examples/s, MFU {100 * r['mfu']:.1f}% (peak: {r['peak_source']}), "
          f"compiled peak {r['compiled_peak_mib']:.0f} MiB, device peak {r['device_peak_mib']:.0f} MiB, "
          f"final loss {r['loss']:.3f}")


if __name__ == "__main__":
  main()
