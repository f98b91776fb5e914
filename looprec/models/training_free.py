"""Training-free looping (`model.kind=training_free`; Training-Free Looped Transformers, Chen et al. 2026): an
inference-time wrapper that loops a contiguous window of a trained, un-looped stack's layers, with no training.

The trained model's params are used as they are (a `looped` checkpoint of n_layers layers, usually R = 1
vanilla). With g = layers a..b-1 (model.window = "a:b"), one loop is the paper's damped update: K = model.substeps
Euler sub-steps h <- h + (g(h) - h) / K from the window input h_in, output beta g(h_in) + (1 - beta) h_K
(beta = model.damping; defaults K = 6, beta = 0.5 as RECIPE.md gives them). Layers 0..a-1 run once before the
loop and layers b..n_layers-1 once after it. R loops apply that damped window R times (R = 1 is the paper's
method; larger R is what the sweeps and halting of this codebase add). K = 1, R = 1 is the trained model exactly.
No input injection, no dropout. The per-layer outputs a loop reports are those of g(h_in).

    cfg = training_free.wrap(vanilla_cfg, "window=1:2,substeps=6,damping=0.5")
    model = looprec.build_model(cfg, vocab_size)       # run with the vanilla model's params
"""
from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp

from looprec.config import ConfigError, KindOptions, ModelConfig, choices, register_kind
from looprec.models.looped import Block, LoopedTransformer


@dataclasses.dataclass(frozen=True)
class Options(KindOptions):
  """The looped window of the trained stack and its damped update."""

  window: str = ""  # "a:b", layers a..b-1 (0-based) of the trained stack are looped
  substeps: int = 6  # damped sub-steps K per loop
  damping: float = 0.5  # beta: the loop's output is beta g(h_in) + (1 - beta) h_K

  def window_layers(self) -> tuple[int, int]:
    """model.window "a:b" as (a, b): layers a..b-1 are looped."""
    m = re.fullmatch(r"(\d+):(\d+)", self.window)
    if m is None:
      raise ConfigError(f"model.window={self.window!r} is not 'a:b' (loop layers a..b-1, 0-based)")
    return int(m.group(1)), int(m.group(2))

  def validate(self, cfg: ModelConfig):
    a, b = self.window_layers()
    if not 0 <= a < b <= cfg.n_layers:
      raise ConfigError(f"model.window={self.window!r} is outside the model's {cfg.n_layers} layers (need 0 <= a < b "
                        f"<= {cfg.n_layers})")
    if self.substeps < 1:
      raise ConfigError(f"model.substeps={self.substeps} must be >= 1")
    if not 0.0 <= self.damping <= 1.0:
      raise ConfigError(f"model.damping={self.damping} must be in [0, 1]")
    if cfg.any_dropout:
      raise ConfigError("model.embed/attn/resid_dropout: model.kind=training_free is inference only")


KEYS = {f.name: type(f.default) for f in dataclasses.fields(Options)}  # what wrap's spec may set


def wrap(cfg: ModelConfig, spec: str) -> ModelConfig:
  """The training-free config of a trained `looped` model's config from "window=a:b[,substeps=K][,damping=b]"
  (an empty spec or missing keys: the middle third of the layers, K = 6, beta = 0.5); ConfigError if invalid."""
  if cfg.kind != "looped":
    raise ConfigError(f"training-free looping wraps a model.kind=looped checkpoint, not {cfg.kind!r}")
  third = cfg.n_layers // 3
  values = {"window": f"{third}:{cfg.n_layers - third}" if cfg.n_layers > 2 else f"0:{cfg.n_layers}"}
  for item in filter(None, spec.split(",")):
    key, sep, text = item.partition("=")
    if not sep or key not in KEYS:
      raise ConfigError(f"training-free {item!r} is not one of {choices(key, KEYS).replace(', ', '=..., ')}=...")
    try:
      values[key] = KEYS[key](text)
    except ValueError:
      raise ConfigError(f"training-free {key}={text!r}: expected {KEYS[key].__name__}") from None
  out = dataclasses.replace(cfg, kind="training_free", injection="none", **values)
  out.validate()
  return out


@register_kind("training_free", Options)
@dataclasses.dataclass(frozen=True)
class TrainingFree(LoopedTransformer):
  """State {"h": B x T x D, "tokens": B x T}; params are those of the trained `looped` model."""

  cfg: ModelConfig
  vocab_size: int

  def _layers(self, params, lo: int, hi: int, h_BxTxD, tokens_BxT, per_layer: bool = False, cached=None,
              site: str = "", t=0):
    """Layers lo..hi-1 of the trained stack: (output, per-layer outputs or None); with `cached`, (output, {site:
    new keys and values} or {})."""
    if lo == hi:
      return h_BxTxD, (None if cached is None else {})
    sub = {f"layer_{i}": params["block"][f"layer_{lo + i}"] for i in range(hi - lo)}
    if cached is not None:
      return self.run_block(sub, hi - lo, h_BxTxD, tokens_BxT, site, cached, t)
    mask, rope = self.context(tokens_BxT)
    block = Block(dataclasses.replace(self.cfg, n_layers=hi - lo))
    return block.apply({"params": sub}, h_BxTxD, mask, rope, True, per_layer)

  def cache_layers(self) -> dict:
    a, b = self.cfg.options.window_layers()
    sites = {"below": a, "core": (b - a) * self.cfg.options.substeps, "above": self.cfg.n_layers - b}
    return {site: n for site, n in sites.items() if n}

  def embed(self, params, tokens_BxT, cached=None):
    """Token embeddings through the layers below the window: the window's input."""
    a = self.cfg.options.window_layers()[0]
    if cached is None:
      return self._layers(params, 0, a, super().embed(params, tokens_BxT), tokens_BxT)[0]
    return self._layers(params, 0, a, super().embed(params, tokens_BxT, cached)[0], tokens_BxT, cached=cached,
                        site="below")

  def _cached_loop(self, params, state, t, cached):
    """One loop with cached attention: the window's K evaluations each read and write their own keys and values
    (the loop's are theirs stacked on the layer axis, evaluation by evaluation)."""
    a, b = self.cfg.options.window_layers()
    k, beta = self.cfg.options.substeps, self.cfg.options.damping
    h_in, tokens, news = state["h"], state["tokens"], []

    def window(h_BxTxD, j):
      take = lambda kv: jax.tree_util.tree_map(lambda x: x[j * (b - a):(j + 1) * (b - a)], kv)
      sliced = dataclasses.replace(cached, past=lambda site, t: take(cached.past(site, t)))
      out, new = self._layers(params, a, b, h_BxTxD, tokens, cached=sliced, site="core", t=t)
      news.append(new["core"])
      return out

    g_in = window(h_in, 0)
    h_k = h_in + (g_in - h_in) / k
    for j in range(1, k):
      h_k = h_k + (window(h_k, j) - h_k) / k
    kv = jax.tree_util.tree_map(lambda *x: jnp.concatenate(x), *news)
    return {"h": beta * g_in + (1 - beta) * h_k, "tokens": tokens}, kv

  def loop_step(self, params, tokens_BxT, *, rng=None, per_layer: bool = False, cached=None):
    del rng  # inference only
    a, b = self.cfg.options.window_layers()
    k, beta = self.cfg.options.substeps, self.cfg.options.damping

    def step(state, t, key):
      del key
      if cached is not None:
        return self._cached_loop(params, state, t, cached)
      h_in, tokens = state["h"], state["tokens"]
      g_in, layers = self._layers(params, a, b, h_in, tokens, per_layer)
      sub = lambda _, h: h + (self._layers(params, a, b, h, tokens)[0] - h) / k
      h_k = jax.lax.fori_loop(1, k, sub, h_in + (g_in - h_in) / k)
      return {"h": beta * g_in + (1 - beta) * h_k, "tokens": tokens}, layers

    if cached is None:
      return {"h": self.embed(params, tokens_BxT), "tokens": tokens_BxT}, step
    h_BxTxD, kv = self.embed(params, tokens_BxT, cached)
    return {"h": h_BxTxD, "tokens": tokens_BxT}, step, kv

  def final_hidden(self, params, state, cached=None):
    b = self.cfg.options.window_layers()[1]
    if cached is None:
      return self._layers(params, b, self.cfg.n_layers, state["h"], state["tokens"])[0]
    return self._layers(params, b, self.cfg.n_layers, state["h"], state["tokens"], cached=cached, site="above")

