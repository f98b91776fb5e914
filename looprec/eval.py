"""Accuracy per split and the accuracy[split, R] sweep.

One forward pass to R_max reads the answer after every loop, so a sweep over R = 1..R_max costs one compile
and R_max loops per batch instead of R_max compiles and R_max^2 / 2 loops.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from looprec import sharding


@functools.lru_cache(maxsize=None)
def _per_loop_correct_fn(model, mesh, max_loops: int):
  def fn(params, tokens_BxT, read_pos_B, target_B):
    logits_RxBxV = model.loop_logits(params, tokens_BxT, read_pos_B, max_loops)
    return jnp.argmax(logits_RxBxV, -1) == target_B[None]

  return sharding.jit_over_batch(fn, mesh, 3)


def batches(fn, examples: dict, mesh, batch_size: int, keys=("tokens", "read_pos", "target")):
  """Yields (host outputs of fn(*examples[keys]), real rows) over chunks of examples padded to a multiple of the
  device count and sharded on `data`; keys must include "target"."""
  step = batch_size - batch_size % mesh.devices.size or mesh.devices.size
  for start in range(0, len(examples["target"]), step):
    chunk = {k: np.asarray(examples[k][start:start + step]) for k in keys}
    size = len(chunk["target"])
    padded = {k: np.concatenate([v, np.repeat(v[-1:], step - size, 0)]) for k, v in chunk.items()}
    arrays = sharding.put_batch(padded, mesh)
    yield jax.device_get(fn(*(arrays[k] for k in keys))), size


def per_loop_correct(model, params, examples: dict, max_loops: int, mesh, batch_size: int) -> np.ndarray:
  """R_max x N booleans: whether each example's answer after loop R is right."""
  fn = functools.partial(_per_loop_correct_fn(model, mesh, max_loops), params)
  return np.concatenate([out[:, :size] for out, size in batches(fn, examples, mesh, batch_size)], axis=1)


def sweep(model, params, splits: dict, max_loops: int, mesh, batch_size: int = 256) -> dict:
  """accuracy[split][R] for R = 1..max_loops, keys of the inner dict are str(R)."""
  result = {}
  for name, examples in splits.items():
    acc_R = per_loop_correct(model, params, examples, max_loops, mesh, batch_size).mean(axis=1)
    result[name] = {str(r + 1): float(a) for r, a in enumerate(acc_R)}
  return result


def accuracy(model, params, examples: dict, n_loops: int, mesh, batch_size: int = 256) -> float:
  """Accuracy after exactly n_loops loops."""
  return float(per_loop_correct(model, params, examples, n_loops, mesh, batch_size)[-1].mean())
