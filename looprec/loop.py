"""Scan over depth: one weight-tied step function applied R times.

`step_fn(h_BxTxD, t, rng) -> (h_BxTxD, extras)` is supplied by the model; this module only decides how it is
iterated and differentiated. R = n_loops is static (one compiled program per R; compile time does not grow with R
thanks to scan) unless `n_active` is given: then the scan runs n_loops = R_max iterations, the first
R_max - n_active of which are skipped (`lax.cond`), so one program serves every R <= R_max, with exact gradients.
A per-example n_active_B (R per example, e.g. its length as in Fan et al. 2024) masks the updates instead: example b
takes the first n_active_B[b] loops and then keeps its state.
`Scan` chooses how the loop is compiled and differentiated: unrolling, per-loop rematerialisation and truncated
backpropagation through depth.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from looprec.config import TrainConfig

# What a rematerialised loop keeps for the backward pass (beyond its input state).
REMAT_POLICIES = {"loop": jax.checkpoint_policies.nothing_saveable,
                  "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


@dataclasses.dataclass(frozen=True)
class Scan:
  """How the scan over depth is compiled and differentiated (none of it changes the result).

  unroll: loops per scan iteration (1 = a rolled loop; >= R = fully unrolled: no stacked per-loop residuals to
  write and read back, faster steps on CPU, compile time growing with R). remat: none (keep every loop's
  activations) | loop (recompute each loop in the backward pass; memory holds one state per loop) | dots (keep
  only the loop's weight matmul outputs). backprop_loops: k > 0 backpropagates through the last k loops only (the
  earlier ones run under stop_gradient, as in Huginn); 0 = through all. The fields are train.unroll, train.remat
  and train.backprop_loops, checked as `TrainConfig.check_depth` checks them (a ConfigError, a ValueError).
  """

  unroll: int = 1
  remat: str = "none"
  backprop_loops: int = 0

  def __post_init__(self):
    TrainConfig.check_depth(self.unroll, self.remat, self.backprop_loops)


PLAIN = Scan()


def scan_loops(step_fn, h_BxTxD, n_loops: int, rng=None, readout=None, *, n_active=None,
               scan: Scan = PLAIN):
  """Applies step_fn n_loops times with lax.scan (n_active of them when given: a traced int <= n_loops, or B of
  them, one per example).

  Returns the final state and the per-loop values of `readout(h_BxTxD, extras)` stacked on a leading R axis
  (None without a readout), where extras is what step_fn returned beside the new state. With a scalar n_active
  the skipped loops come first and the active ones see t = 0..n_active-1; with a per-example one every example
  sees t = 0.. and its state stops changing after its own count; readouts are not available with either. scan:
  see `Scan`.
  """
  if n_loops < 1:
    raise ValueError(f"n_loops must be >= 1, got {n_loops}")
  if n_active is not None and readout is not None:
    raise ValueError("per-loop readouts need a static loop count (n_active=None)")
  keys = jax.random.split(rng, n_loops) if rng is not None else jnp.zeros((n_loops,), jnp.uint32)
  per_example = n_active is not None and jnp.ndim(n_active) == 1
  n_skipped = 0 if n_active is None or per_example else n_loops - n_active

  def body(h, xs):
    t, key = xs
    key = key if rng is not None else None
    if n_active is None:
      h, extras = step_fn(h, t, key)
      return h, (readout(h, extras) if readout is not None else None)
    if per_example:
      new = step_fn(h, t, key)[0]
      keep = lambda a, b: jnp.where((t < n_active).reshape((-1,) + (1,) * (a.ndim - 1)), a, b)
      return jax.tree_util.tree_map(keep, new, h), None
    t_active = t - n_skipped
    return jax.lax.cond(t_active >= 0, lambda h: step_fn(h, t_active, key)[0], lambda h: h, h), None

  if scan.remat != "none":
    body = jax.checkpoint(body, policy=REMAT_POLICIES[scan.remat])
  xs = (jnp.arange(n_loops), keys)
  n_frozen = n_loops - scan.backprop_loops if 0 < scan.backprop_loops < n_loops else 0
  run = lambda h, xs: jax.lax.scan(body, h, xs, unroll=min(scan.unroll, len(xs[0])))
  if not n_frozen:
    return run(h_BxTxD, xs)
  head, tail = jax.tree_util.tree_map(lambda x: x[:n_frozen], xs), jax.tree_util.tree_map(lambda x: x[n_frozen:], xs)
  h_BxTxD, ys_head = run(h_BxTxD, head)
  h_BxTxD, ys_tail = run(jax.lax.stop_gradient(h_BxTxD), tail)
  ys = None if readout is None else jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), ys_head, ys_tail)
  return h_BxTxD, ys


def while_loops(step_fn, h_BxTxD, max_loops, carry, update):
  """Applies step_fn (no dropout) until `update` says every example is done or max_loops loops have run.

  `update(h_BxTxD, t, carry) -> (carry, done)` runs after loop t (0-based) with done a scalar bool. max_loops
  may be traced, so one compiled program serves every cap. Returns (final state, carry, loops executed).
  """
  def cond(state):
    _, t, _, done = state
    return (t < max_loops) & ~done

  def body(state):
    h, t, c, _ = state
    h, _ = step_fn(h, t, None)
    c, done = update(h, t, c)
    return h, t + 1, c, done

  h, t, carry, _ = jax.lax.while_loop(cond, body, (h_BxTxD, jnp.int32(0), carry, jnp.bool_(False)))
  return h, carry, t
