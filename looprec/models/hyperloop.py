"""Hyper-connected looped transformer (`model.kind=hyperloop`; Hyperloop Transformers, Zeitoun et al. 2026):
the prelude / core / coda model whose looped core reads from and writes to n parallel residual streams, mixed by
small learned gates applied once per loop (not per layer), and merged (mean) before the coda.

What is implemented (the dynamic hyper-connections of Zhu et al. 2024, at loop level as Hyperloop places them):
the streams Y (B x T x n x D) start as n copies of the prelude's output; loop t, with gate set s = min(t,
gate_sets - 1) and z = RMSNorm(Y flattened to n*D) (no learned scale), computes

    pre  = a_pre[s]  + c_pre[s]  * tanh(z W_pre[s])       (n)      x   = sum_i pre_i Y_i
    post = a_post[s] + c_post[s] * tanh(z W_post[s])      (n)      F   = core(inject(x)) - x
    res  = a_res[s]  + c_res[s]  * tanh(z W_res[s])       (n x n)  Y_m <- sum_i res_mi Y_i + post_m F

initialised a_pre[s] = one-hot(s mod n), a_post = 1, a_res = I, W = 0, c = 0.01, so at init every stream carries the
same state and the model equals prelude_core_coda with the same params (for any n); the one-hot read breaks the
symmetry under training. Departures from the paper, which builds on mHC: the residual mix is not projected to a
doubly stochastic matrix (Sinkhorn), pre/post are not sigmoid-bounded, and there is no loop-position embedding.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from looprec.config import ConfigError, ModelConfig, register_kind
from looprec.models import prelude_core_coda

DYNAMIC_SCALE_INIT = 0.01


@dataclasses.dataclass(frozen=True)
class Options(prelude_core_coda.Options):
  """prelude_core_coda's, and the streams and their gates."""

  n_streams: int = 1  # parallel residual streams
  gate_sets: int = 4  # per-loop gate sets; loop t >= gate_sets uses the last

  def validate(self, cfg: ModelConfig):
    super().validate(cfg)
    for name in ("n_streams", "gate_sets"):
      if getattr(self, name) < 1:
        raise ConfigError(f"model.{name}={getattr(self, name)} must be >= 1")


@register_kind("hyperloop", Options)
@dataclasses.dataclass(frozen=True)
class Hyperloop(prelude_core_coda.PreludeCoreCoda):
  """State {"h": B x T x n x D streams, "tokens": B x T}; `final_hidden` merges the streams and runs the coda."""

  cfg: ModelConfig
  vocab_size: int

  def init(self, rng, seq_len: int = 8) -> dict:
    params = super().init(rng, seq_len)
    n, d, g = self.cfg.options.n_streams, self.cfg.d_model, self.cfg.options.gate_sets
    params["hyper"] = {
        "pre": jax.nn.one_hot(jnp.arange(g) % n, n), "post": jnp.ones((g, n)), "res": jnp.tile(jnp.eye(n), (g, 1, 1)),
        "w_pre": jnp.zeros((g, n * d, n)), "w_post": jnp.zeros((g, n * d, n)), "w_res": jnp.zeros((g, n * d, n * n)),
        **{f"c_{name}": jnp.full((g,), DYNAMIC_SCALE_INIT) for name in ("pre", "post", "res")}}  # distinct buffers
    return params

  def gates(self, params, t, y_BxTxNxD):
    """(pre B x T x n, post B x T x n, res B x T x n x n) of loop t for the streams y."""
    g = jax.tree_util.tree_map(lambda a: a[jnp.minimum(t, self.cfg.options.gate_sets - 1)], params["hyper"])
    b, t_len, n, d = y_BxTxNxD.shape
    z_BxTxE = y_BxTxNxD.reshape(b, t_len, n * d).astype(jnp.float32)
    z_BxTxE = z_BxTxE * jax.lax.rsqrt(jnp.mean(z_BxTxE ** 2, -1, keepdims=True) + 1e-6)
    dyn = lambda name: jnp.tanh(z_BxTxE @ g[f"w_{name}"]) * g[f"c_{name}"]
    return (g["pre"] + dyn("pre"), g["post"] + dyn("post"), g["res"] + dyn("res").reshape(b, t_len, n, n))

  def loop_step(self, params, tokens_BxT, *, rng=None, per_layer: bool = False, cached=None):
    """prelude_core_coda's step (injection and the core block) on the streams' read-out, written back through
    the gates."""
    state, core, *kv = super().loop_step(params, tokens_BxT, rng=rng, per_layer=per_layer, cached=cached)
    y_BxTxNxD = jnp.repeat(state["h"][:, :, None], self.cfg.options.n_streams, axis=2)

    def step(state, t, key):
      y_BxTxNxD = state["h"]
      pre_BxTxN, post_BxTxN, res_BxTxNxN = self.gates(params, t, y_BxTxNxD)
      x_BxTxD = jnp.einsum("btn,btnd->btd", pre_BxTxN, y_BxTxNxD)
      out, layers = core({"h": x_BxTxD, "tokens": state["tokens"]}, t, key)
      update_BxTxD = out["h"] - x_BxTxD
      y_BxTxNxD = (jnp.einsum("btmn,btnd->btmd", res_BxTxNxN, y_BxTxNxD)
                   + post_BxTxN[..., None] * update_BxTxD[:, :, None])
      return {"h": y_BxTxNxD, "tokens": state["tokens"]}, layers

    return ({"h": y_BxTxNxD, "tokens": tokens_BxT}, step, *kv)

  def final_hidden(self, params, state, cached=None):
    return super().final_hidden(params, {"h": state["h"].mean(axis=2), "tokens": state["tokens"]}, cached)

