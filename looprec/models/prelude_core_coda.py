"""Begin / looped middle / end blocks (`model.kind=prelude_core_coda`, as Huginn, Ouro and Hyperloop build them):
embed -> prelude (n_prelude layers, once) -> core (n_layers layers) x R -> coda (n_coda layers, once) -> final norm
-> tied head. The prelude's output is the state entering loop 1 and what input injection adds before every later
loop; the coda reads the state after any loop (so a readout after loop t is the model exited at t).

n_prelude = n_coda = 0 is the paper's model (`looped`), with the same params; R = 1 is a plain stack of
n_prelude + n_layers + n_coda layers. The begin and end blocks run without dropout (config validation refuses
dropout with them).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from looprec.config import ConfigError, KindOptions, ModelConfig, register_kind
from looprec.models.looped import Block, LoopedTransformer, attention_mask


@dataclasses.dataclass(frozen=True)
class Options(KindOptions):
  """The sizes of the non-looped blocks."""

  n_prelude: int = 0  # layers before the loop (their output is the state entering loop 1 and the injection)
  n_coda: int = 0  # layers after the loop, before the final norm

  def validate(self, cfg: ModelConfig):
    for name in ("n_prelude", "n_coda"):
      if getattr(self, name) < 0:
        raise ConfigError(f"model.{name}={getattr(self, name)} must be >= 0")
    if cfg.any_dropout and (self.n_prelude or self.n_coda):
      raise ConfigError("model.embed/attn/resid_dropout: the begin/end blocks run without dropout (set "
                        "model.n_prelude/n_coda=0)")


@register_kind("prelude_core_coda", Options)
@dataclasses.dataclass(frozen=True)
class PreludeCoreCoda(LoopedTransformer):
  """The paper's model with non-looped begin and end blocks. The state carried between loops is
  {"h": B x T x D, "tokens": B x T} (the coda needs the tokens' attention mask)."""

  cfg: ModelConfig
  vocab_size: int

  def _stack(self, name: str) -> Block:
    return Block(dataclasses.replace(self.cfg, n_layers=getattr(self.cfg.options, name)))

  def init(self, rng, seq_len: int = 8) -> dict:
    params = super().init(rng, seq_len)
    x = jnp.zeros((1, seq_len, self.cfg.d_model))
    mask = attention_mask(jnp.ones((1, seq_len), jnp.int32), self.cfg.attn_window)
    for i, name in enumerate(("n_prelude", "n_coda")):
      if getattr(self.cfg.options, name):
        key = jax.random.fold_in(rng, i + 1)
        params[name[2:]] = self._stack(name).init(key, x, mask, self._rope(seq_len))["params"]
    return params

  def cache_layers(self) -> dict:
    sites = {"prelude": self.cfg.options.n_prelude, "core": self.cfg.n_layers, "coda": self.cfg.options.n_coda}
    return {site: n for site, n in sites.items() if n}

  def _run(self, name: str, params, h_BxTxD, tokens_BxT, cached=None):
    """The begin or end block (no-op when it has no layers); with `cached`, and {its site: new keys and values}."""
    if not getattr(self.cfg.options, name):
      return h_BxTxD if cached is None else (h_BxTxD, {})
    return self.run_block(params[name[2:]], getattr(self.cfg.options, name), h_BxTxD, tokens_BxT, name[2:], cached)

  def embed(self, params, tokens_BxT, cached=None):
    """Token embeddings through the prelude: the state entering loop 1 and the injected input."""
    if cached is None:
      return self._run("n_prelude", params, super().embed(params, tokens_BxT), tokens_BxT)
    return self._run("n_prelude", params, super().embed(params, tokens_BxT, cached)[0], tokens_BxT, cached)

  def loop_step(self, params, tokens_BxT, *, rng=None, per_layer: bool = False, cached=None):
    """The looped model's step on the "h" part of the state (injection and the core block)."""
    h_BxTxD, core, *kv = super().loop_step(params, tokens_BxT, rng=rng, per_layer=per_layer, cached=cached)

    def step(state, t, key):
      h_BxTxD, layers = core(state["h"], t, key)
      return {"h": h_BxTxD, "tokens": state["tokens"]}, layers

    return ({"h": h_BxTxD, "tokens": tokens_BxT}, step, *kv)

  def final_hidden(self, params, state, cached=None):
    return self._run("n_coda", params, state["h"], state["tokens"], cached)

