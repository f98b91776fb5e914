"""Scan over depth: one weight-tied step function applied R times.

`loop_step(h_BxTxD, t, rng) -> (h_BxTxD, extras)` is supplied by the model; this module only decides how it is
iterated. R is static here (one compiled program per R, compile time independent of R thanks to scan).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def scan_loops(loop_step, h_BxTxD, n_loops: int, rng=None, readout=None):
  """Applies loop_step n_loops times with lax.scan.

  Returns the final state and the per-loop values of `readout(h_BxTxD, extras)` stacked on a leading R axis
  (None without a readout), where extras is what loop_step returned beside the new state.
  """
  if n_loops < 1:
    raise ValueError(f"n_loops must be >= 1, got {n_loops}")
  keys = jax.random.split(rng, n_loops) if rng is not None else jnp.zeros((n_loops,), jnp.uint32)

  def body(h, xs):
    t, key = xs
    h, extras = loop_step(h, t, key if rng is not None else None)
    return h, (readout(h, extras) if readout is not None else None)

  return jax.lax.scan(body, h_BxTxD, (jnp.arange(n_loops), keys))


def while_loops(loop_step, h_BxTxD, max_loops, carry, update):
  """Applies loop_step (no dropout) until `update` says every example is done or max_loops loops have run.

  `update(h_BxTxD, t, carry) -> (carry, done)` runs after loop t (0-based) with done a scalar bool. max_loops
  may be traced, so one compiled program serves every cap. Returns (final state, carry, loops executed).
  """
  def cond(state):
    _, t, _, done = state
    return (t < max_loops) & ~done

  def body(state):
    h, t, c, _ = state
    h, _ = loop_step(h, t, None)
    c, done = update(h, t, c)
    return h, t + 1, c, done

  h, t, carry, _ = jax.lax.while_loop(cond, body, (h_BxTxD, jnp.int32(0), carry, jnp.bool_(False)))
  return h, carry, t
