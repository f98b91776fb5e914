"""Compiled memory per device of the paper-shape train step with params and optimizer state replicated or split
over an `fsdp` mesh axis (train.fsdp), from `memory_analysis()` of the partitioned program.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 .venv/bin/python benchmarks/fsdp_memory.py [--fsdp 1,8]

The state is never created: the step is lowered for ShapeDtypeStructs carrying the layouts `train.init_state` would
give it, so the replicated layout costs no host memory either. The paper's model: d=768, 12 heads, L=4, NoPE,
bf16 matmuls (float32 params, AdamW moments), B=128, T=22, R=4.
"""
from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from looprec import models, sharding, train
from looprec.config import ModelConfig, TrainConfig

MIB = 2**20


def parse():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--fsdp", default="1,8", help="the train.fsdp values to compare (each divides the devices)")
  parser.add_argument("--loops", type=int, default=4)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--seq-len", type=int, default=22)
  return parser.parse_args()


def measure(model, tx, fsdp: int, args) -> dict:
  """MiB per device: the state's share (from its layout), and the compiled step's arguments, outputs, aliased
  (donated) buffers, temporaries and peak (arguments + outputs - aliased + temporaries)."""
  mesh = sharding.make_mesh(fsdp)
  shapes = jax.eval_shape(lambda rng: train.init_state(model, tx, rng, args.seq_len, mesh), jax.random.PRNGKey(0))
  state = jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes,
                                 sharding.state_shardings(shapes, mesh))
  rows = jax.ShapeDtypeStruct((args.batch,), jnp.int32, sharding=sharding.data_sharded(mesh))
  batch = {"tokens": jax.ShapeDtypeStruct((args.batch, args.seq_len), jnp.int32, sharding=sharding.data_sharded(mesh)),
           "read_pos": rows, "target": rows}
  step = train.Programs(model, tx, mesh, 0.0).program(train.train_step, args.loops, False, state)
  m = step.lower(state, batch).compile().memory_analysis()
  leaves = jax.tree_util.tree_leaves(state)
  per_device = sum(np.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in leaves)
  return {"state": per_device / MIB, "arguments": m.argument_size_in_bytes / MIB,
          "outputs": m.output_size_in_bytes / MIB, "aliased": m.alias_size_in_bytes / MIB,
          "temporaries": m.temp_size_in_bytes / MIB,
          "peak": (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
                   + m.temp_size_in_bytes) / MIB}


def main():
  args = parse()
  cfg = ModelConfig(d_model=768, n_heads=12, n_layers=4, pos_emb="none", injection="none", out_init_scale=0.0,
                    dtype="bfloat16")
  model = models.build(cfg, 213)
  tx = train.make_optimizer(TrainConfig(lr=1e-4, warmup_steps=2000, grad_clip=0.0, weight_decay_on="all"))
  print(f"{jax.device_count()} {jax.devices()[0].platform} devices; d={cfg.d_model} heads={cfg.n_heads} "
        f"L={cfg.n_layers} B={args.batch} T={args.seq_len} R={args.loops}; load average {os.getloadavg()[0]:.1f}")
  rows = {int(n): measure(model, tx, int(n), args) for n in args.fsdp.split(",")}
  keys = list(next(iter(rows.values())))
  print("MiB per device | " + " | ".join(f"{k:>11}" for k in keys))
  for fsdp, row in rows.items():
    print(f"{'fsdp=' + str(fsdp):>14} | " + " | ".join(f"{row[k]:11.1f}" for k in keys))
  first, last = rows[min(rows)], rows[max(rows)]
  print(f"fsdp={min(rows)} / fsdp={max(rows)}: " + ", ".join(f"{k} {first[k] / last[k]:.2f}x" for k in keys))


if __name__ == "__main__":
  main()
