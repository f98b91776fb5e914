"""Accuracy per split, the accuracy[split, R] sweep, and the per-loop pass both read (answer margins and hits).

One forward pass to R_max reads the answer after every loop, so a sweep over R = 1..R_max costs one compile
and R_max loops per batch instead of R_max compiles and R_max^2 / 2 loops.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from looprec import sharding
from looprec.config import ConfigError


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


def logit_margins(logits_RxBxV, target_B):
  """(margin_RxB: target logit - best other logit, hit_RxB: whether the argmax is the target). A sequence answer
  (logits R x B x K x V, target B x K) scores its worst slot (padding slots, target 0, left out) and hits if all do."""
  logits_RxBxV = logits_RxBxV.astype(jnp.float32)
  is_target_1xBxV = jax.nn.one_hot(target_B, logits_RxBxV.shape[-1], dtype=bool)[None]
  target_RxB = jnp.sum(jnp.where(is_target_1xBxV, logits_RxBxV, 0.0), -1)
  other_RxB = jnp.max(jnp.where(is_target_1xBxV, -jnp.inf, logits_RxBxV), -1)
  margin_RxB, hit_RxB = target_RxB - other_RxB, jnp.argmax(logits_RxBxV, -1) == target_B[None]
  if target_B.ndim == 1:
    return margin_RxB, hit_RxB
  pad_1xBxK = (target_B == 0)[None]
  return jnp.where(pad_1xBxK, jnp.inf, margin_RxB).min(-1), (hit_RxB | pad_1xBxK).all(-1)


@functools.lru_cache(maxsize=None)
def _per_loop_fn(model, mesh, n_loops: int):
  def fn(params, tokens_BxT, read_pos_B, target_B):
    return logit_margins(model.loop_logits(params, tokens_BxT, read_pos_B, n_loops), target_B)

  return sharding.jit_over_batch(fn, mesh, 3)


def per_loop(model, params, examples: dict, n_loops: int, mesh, batch_size: int = 256):
  """(margin_RxN, hit_RxN) after every loop R = 1..n_loops, from one scan per batch."""
  fn = functools.partial(_per_loop_fn(model, mesh, n_loops), params)
  parts = list(batches(fn, examples, mesh, batch_size))
  return tuple(np.concatenate([out[i][:, :size] for out, size in parts], 1) for i in range(2))


def sweep(model, params, splits: dict, max_loops: int, mesh=None, batch_size: int = 256) -> dict:
  """accuracy[split][str(R)] for R = 1..max_loops, read after every loop of one scan: one compile for all R.

      acc = sweep(model, params, {"3hop_test": task.eval_split(3)}, max_loops=20)
      acc["3hop_test"]["7"]  # accuracy after 7 loops
  """
  if max_loops < 1:
    raise ConfigError(f"max_loops={max_loops} must be >= 1")
  mesh = mesh or sharding.make_mesh()
  result = {}
  for name, examples in splits.items():
    acc_R = per_loop(model, params, examples, max_loops, mesh, batch_size)[1].mean(axis=1)
    result[name] = {str(r + 1): float(a) for r, a in enumerate(acc_R)}
  return result


def accuracy(model, params, examples: dict, n_loops: int, mesh, batch_size: int = 256) -> float:
  """Accuracy after exactly n_loops loops."""
  return float(per_loop(model, params, examples, n_loops, mesh, batch_size)[1][-1].mean())
