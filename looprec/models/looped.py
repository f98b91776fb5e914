"""The recurrent-depth transformer: embed -> (block of L pre-LN layers) x R -> final norm -> tied head.

Layers are Flax Linen modules; the model itself is pure functions over a plain params pytree (`init`,
`loop_step`, `head`; the forward pass and readouts come from `LoopedBase`), so the depth loop is an ordinary
`lax.scan` closing over the block's params (weight tying for free) and the jit boundary sees only arrays.
R = 1 is the vanilla transformer.
"""
from __future__ import annotations

import dataclasses
import math
import typing

import flax.linen as nn
import jax
import jax.numpy as jnp

from looprec.config import ModelConfig, register_kind
from looprec.models.base import LoopedBase


def _dtype(cfg: ModelConfig):
  return jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32


def _out_init(cfg: ModelConfig):
  """Residual-projection init: init_std x out_init_scale (0 = each layer starts as the identity), divided by
  sqrt(2 n_layers) when out_init_scaled (GPT-2's trainer init; a bare GPT2Block's Conv1D is not scaled)."""
  std = cfg.init_std * cfg.out_init_scale / (math.sqrt(2 * cfg.n_layers) if cfg.out_init_scaled else 1.0)
  return nn.initializers.zeros if std == 0 else nn.initializers.normal(std)


def rope_tables(n_positions: int, head_dim: int, start=0):
  """cos/sin tables (T x head_dim/2) of rotary position embeddings at positions start..start+n_positions-1."""
  inv_freq = 1.0 / (10_000 ** (jnp.arange(0, head_dim, 2) / head_dim))
  angles_TxF = (start + jnp.arange(n_positions))[:, None] * inv_freq[None, :]
  return jnp.cos(angles_TxF), jnp.sin(angles_TxF)


def apply_rope(x_BxTxHxK, cos_TxF, sin_TxF):
  x1, x2 = jnp.split(x_BxTxHxK, 2, axis=-1)
  cos, sin = cos_TxF[None, :, None, :], sin_TxF[None, :, None, :]
  return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).astype(x_BxTxHxK.dtype)


def sinusoidal_table(n_positions: int, d_model: int):
  pos = jnp.arange(n_positions)[:, None]
  inv_freq = 1.0 / (10_000 ** (jnp.arange(0, d_model, 2) / d_model))
  table = jnp.zeros((n_positions, d_model))
  table = table.at[:, 0::2].set(jnp.sin(pos * inv_freq))
  return table.at[:, 1::2].set(jnp.cos(pos * inv_freq[: d_model // 2]))


def attention_mask(tokens_BxT, window: int, pad_id: int = 0):
  """B x 1 x T x T booleans: causal, pads masked as keys, optional local window."""
  t = tokens_BxT.shape[1]
  q, k = jnp.arange(t)[:, None], jnp.arange(t)[None, :]
  allowed_TxT = k <= q
  if window:
    allowed_TxT &= k > q - window
  key_ok_Bx1x1xT = (tokens_BxT != pad_id)[:, None, None, :]
  return allowed_TxT[None, None] & key_ok_Bx1x1xT


@dataclasses.dataclass(frozen=True)
class Cached:
  """Cached attention (decoding, `looprec.decode`): the tokens B x T sit at positions start..start+T-1 and attend,
  besides each other (causally), to the S cached positions whose `key_ok_BxS` is set (written, not a pad).
  `past(site, t)` gives the keys and values that the block at `site` reads at loop t ({"k", "v"}: L x B x S x H x
  K; "core" is the looped block, other sites are blocks run once and ignore t)."""

  start: jax.Array
  past: typing.Callable
  key_ok_BxS: jax.Array

  def mask(self, tokens_BxT, window: int, pad_id: int = 0):
    """B x 1 x T x (S + T) booleans: the cached positions, then the tokens' own causal mask."""
    q_T = self.start + jnp.arange(tokens_BxT.shape[1])
    past_BxTxS = jnp.broadcast_to(self.key_ok_BxS[:, None, :], (*tokens_BxT.shape, self.length))
    if window:
      past_BxTxS &= jnp.arange(self.length)[None, None, :] > q_T[None, :, None] - window
    return jnp.concatenate([past_BxTxS[:, None], attention_mask(tokens_BxT, window, pad_id)], axis=-1)

  @property
  def length(self) -> int:
    """S, the cache's positions."""
    return self.key_ok_BxS.shape[1]


class Attention(nn.Module):
  """Multi-head attention. With `past` ({"k", "v"}: B x S x H x K, cached keys and values put before the tokens'
  own; the mask then covers S + T keys) it returns (output, the tokens' own {"k", "v"}) for the cache."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxD, mask_Bx1xTxT, rope, deterministic: bool, past=None):
    cfg = self.cfg
    h, k_dim = cfg.n_heads, cfg.d_model // cfg.n_heads
    dense = lambda n, init, name: nn.DenseGeneral(n, dtype=_dtype(cfg), kernel_init=init, name=name)
    qkv_BxTx3xHxK = dense((3, h, k_dim), nn.initializers.normal(cfg.init_std), "qkv")(x_BxTxD)
    q, k, v = (qkv_BxTx3xHxK[:, :, i] for i in range(3))
    if rope is not None:
      q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    new = {"k": k, "v": v}
    if past is not None:
      k = jnp.concatenate([past["k"].astype(k.dtype), k], axis=1)
      v = jnp.concatenate([past["v"].astype(v.dtype), v], axis=1)
    if cfg.attention == "dot_product":  # XLA's fused attention (cuDNN flash attention on GPU); no probs dropout
      out_BxTxHxK = jax.nn.dot_product_attention(q, k, v, mask=mask_Bx1xTxT)
    else:
      logits_BxHxTxT = jnp.einsum("bqhk,bthk->bhqt", q, k) / math.sqrt(k_dim)
      logits_BxHxTxT = jnp.where(mask_Bx1xTxT, logits_BxHxTxT.astype(jnp.float32), -1e30)
      probs = jax.nn.softmax(logits_BxHxTxT, axis=-1).astype(v.dtype)
      probs = nn.Dropout(cfg.attn_dropout)(probs, deterministic=deterministic)
      out_BxTxHxK = jnp.einsum("bhqt,bthk->bqhk", probs, v)
    out = nn.DenseGeneral(cfg.d_model, axis=(-2, -1), dtype=_dtype(cfg), kernel_init=_out_init(cfg), name="out")
    return out(out_BxTxHxK) if past is None else (out(out_BxTxHxK), new)


class Layer(nn.Module):
  """A GPT-2 pre-LN layer: x + attn(ln(x)), then x + mlp(ln(x))."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxD, mask_Bx1xTxT, rope, deterministic: bool, past=None):
    """The new state; with `past` (Attention's), (the new state, the layer's new keys and values)."""
    cfg = self.cfg
    drop = nn.Dropout(cfg.resid_dropout)
    a = Attention(cfg, name="attn")(nn.LayerNorm(cfg.ln_eps, name="ln1")(x_BxTxD), mask_Bx1xTxT, rope, deterministic,
                                    past)
    a, new = a if past is not None else (a, None)
    x_BxTxD = x_BxTxD + drop(a, deterministic=deterministic)
    m = nn.LayerNorm(cfg.ln_eps, name="ln2")(x_BxTxD)
    m = nn.Dense(cfg.d_ff or 4 * cfg.d_model, dtype=_dtype(cfg), kernel_init=nn.initializers.normal(cfg.init_std),
                 name="fc")(m)
    m = nn.Dense(cfg.d_model, dtype=_dtype(cfg), kernel_init=_out_init(cfg), name="proj")(nn.gelu(m))
    x_BxTxD = x_BxTxD + drop(m, deterministic=deterministic)
    return x_BxTxD if past is None else (x_BxTxD, new)


class Block(nn.Module):
  """The L layers that are looped. Returns the output and, if asked, every layer's output (L x B x T x D); with
  `past` (cached keys and values, {"k", "v"}: L x B x S x H x K), the output and the layers' new keys and values
  ({"k", "v"}: L x B x T x H x K) instead."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxD, mask_Bx1xTxT, rope, deterministic: bool = True, per_layer: bool = False, past=None):
    outs, news = [], []
    for i in range(self.cfg.n_layers):
      layer = Layer(self.cfg, name=f"layer_{i}")
      if past is None:
        x_BxTxD = layer(x_BxTxD, mask_Bx1xTxT, rope, deterministic)
      else:
        x_BxTxD, new = layer(x_BxTxD, mask_Bx1xTxT, rope, deterministic, jax.tree_util.tree_map(lambda a: a[i], past))
        news.append(new)
      outs.append(x_BxTxD)
    if past is not None:
      return x_BxTxD, jax.tree_util.tree_map(lambda *a: jnp.stack(a), *news)
    return x_BxTxD, (jnp.stack(outs) if per_layer else None)


@register_kind("looped")
@dataclasses.dataclass(frozen=True)
class LoopedTransformer(LoopedBase):
  """The paper's model (`model.kind=looped`): pure functions of a params pytree. `vocab_size` comes from the data."""

  cfg: ModelConfig
  vocab_size: int

  def init(self, rng, seq_len: int = 8) -> dict:
    cfg = self.cfg
    cfg.validate()
    k_emb, k_pos, k_block, k_adapt = jax.random.split(rng, 4)
    d = cfg.d_model
    params = {"embed": jax.random.normal(k_emb, (self.vocab_size, d)) * cfg.embed_init_std}
    if cfg.pos_emb == "learned":
      params["pos"] = jax.random.normal(k_pos, (cfg.max_positions, d)) * cfg.embed_init_std
    x = jnp.zeros((1, seq_len, d))
    mask = attention_mask(jnp.ones((1, seq_len), jnp.int32), cfg.attn_window)
    params["block"] = Block(cfg).init(k_block, x, mask, self._rope(seq_len))["params"]
    params["final_norm"] = nn.LayerNorm(cfg.ln_eps).init(k_block, x)["params"]
    if cfg.injection == "adapter":
      # Huginn-style adapter on concat(state, embedding); starts as state + embedding.
      eye = jnp.eye(d)
      params["adapter"] = {"kernel": jnp.concatenate([eye, eye]) + jax.random.normal(k_adapt, (2 * d, d)) * cfg.init_std,
                           "bias": jnp.zeros((d,))}
    return params

  def cache_layers(self) -> dict:
    """The layers of each block that attention caches while decoding, by site ("core": the looped block's, per
    loop; for other kinds also the blocks run once)."""
    return {"core": self.cfg.n_layers}

  def _rope(self, seq_len: int, start=0):
    cfg = self.cfg
    return rope_tables(seq_len, cfg.d_model // cfg.n_heads, start) if cfg.pos_emb == "rope" else None

  def context(self, tokens_BxT, cached: Cached | None = None):
    """(mask, rope) of a block run on the tokens: the whole sequence, or the tokens after a cache."""
    if cached is None:
      return attention_mask(tokens_BxT, self.cfg.attn_window), self._rope(tokens_BxT.shape[1])
    return cached.mask(tokens_BxT, self.cfg.attn_window), self._rope(tokens_BxT.shape[1], cached.start)

  def run_block(self, block_params, n_layers: int, h_BxTxD, tokens_BxT, site: str, cached: Cached | None = None,
                t=0):
    """A stack of n_layers layers (not looped) on the tokens: its output, and with `cached` ({site: its new keys
    and values}) beside it."""
    mask, rope = self.context(tokens_BxT, cached)
    block = Block(dataclasses.replace(self.cfg, n_layers=n_layers))
    if cached is None:
      return block.apply({"params": block_params}, h_BxTxD, mask, rope)[0]
    h_BxTxD, new = block.apply({"params": block_params}, h_BxTxD, mask, rope, past=cached.past(site, t))
    return h_BxTxD, {site: new}

  def embed(self, params, tokens_BxT, cached: Cached | None = None):
    """Token (+ absolute position) embeddings, the state entering the first loop (with `cached`: and {}, the
    new keys and values of the blocks it runs)."""
    cfg, t = self.cfg, tokens_BxT.shape[1]
    e_BxTxD = params["embed"][tokens_BxT]
    start = 0 if cached is None else cached.start
    if cfg.pos_emb == "learned":
      if t > cfg.max_positions:
        raise ValueError(f"sequence length {t} exceeds model.max_positions={cfg.max_positions}")
      e_BxTxD = e_BxTxD + (params["pos"][:t] if cached is None else jax.lax.dynamic_slice_in_dim(params["pos"], start, t))
    elif cfg.pos_emb == "sinusoidal":
      table = sinusoidal_table(t, cfg.d_model) if cached is None else sinusoidal_table(cached.length, cfg.d_model)
      e_BxTxD = e_BxTxD + (table if cached is None else jax.lax.dynamic_slice_in_dim(table, start, t))
    return e_BxTxD if cached is None else (e_BxTxD, {})  # the residual stream stays float32; matmuls in cfg.dtype

  def head(self, params, h_xD):
    """Final norm and the head tied to the token embedding: logits over the vocabulary."""
    h = nn.LayerNorm(self.cfg.ln_eps).apply({"params": params["final_norm"]}, h_xD.astype(jnp.float32))
    return h @ params["embed"].T

  def loop_step(self, params, tokens_BxT, *, rng=None, per_layer: bool = False, cached: Cached | None = None):
    """The pieces of the loop: (state entering loop 1, step(h_BxTxD, t, key) -> (h_BxTxD, per_layer or None)).

    step applies input injection (t > 0) and the weight-tied block once; `forward` scans it, and any other
    iteration (e.g. a while_loop that halts) must use it too, so there is one forward pass. rng enables dropout.
    With `cached` (decoding): (state, step, {site: new keys and values of the blocks run before the loop}), and
    step returns the looped block's new keys and values (`Block`) in place of the per-layer outputs.
    """
    cfg = self.cfg
    e_BxTxD, kv = (self.embed(params, tokens_BxT), {}) if cached is None else self.embed(params, tokens_BxT, cached)
    mask, rope = self.context(tokens_BxT, cached)
    block = Block(cfg)
    deterministic = rng is None or not cfg.any_dropout
    if not deterministic and cfg.embed_dropout:
      e_BxTxD = nn.Dropout(cfg.embed_dropout).apply({}, e_BxTxD, deterministic=False, rngs={"dropout": rng})

    def step(h_BxTxD, t, key):
      h_BxTxD = jnp.where(t > 0, self._inject(params, h_BxTxD, e_BxTxD), h_BxTxD)
      rngs = None if deterministic else {"dropout": key}
      past = None if cached is None else cached.past("core", t)
      return block.apply({"params": params["block"]}, h_BxTxD, mask, rope, deterministic, per_layer, past, rngs=rngs)

    return (e_BxTxD, step) if cached is None else (e_BxTxD, step, kv)

  def _inject(self, params, h_BxTxD, e_BxTxD):
    if self.cfg.injection == "add":
      return h_BxTxD + e_BxTxD
    if self.cfg.injection == "adapter":
      a = params["adapter"]
      return (jnp.concatenate([h_BxTxD, e_BxTxD], -1) @ a["kernel"].astype(h_BxTxD.dtype) + a["bias"]).astype(h_BxTxD.dtype)
    return h_BxTxD

  def final_hidden(self, params, state, cached: Cached | None = None):
    del params
    return state if cached is None else (state, {})

