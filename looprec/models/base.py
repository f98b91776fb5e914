"""The interface every looped model implements, and the methods derived from it once for all kinds.

A model kind supplies four things (the `LoopedModel` protocol): `init` (its params pytree), `loop_step` (the
state entering loop 1 and the weight-tied step applied once per loop), `final_hidden` (what follows the loop:
identity for the paper's model, end layers or a stream merge for others) and `head` (final norm and tied head).
`LoopedBase` derives from them the one forward pass (`forward`: a scan with a readout after every loop) and
everything eval, halting, lens and analysis read: `apply`, `answer_logits`, `loop_logits`, `layer_logits`,
`trace`. A new kind subclasses `LoopedBase`, implements the four, and registers itself (`looprec.models`).
"""
from __future__ import annotations

import typing

import jax
import jax.numpy as jnp
import numpy as np
import optax

from looprec import loop
from looprec.config import ModelConfig

# step(state, t, key) -> (state, per-layer outputs L x B x T x D or None); t is the 0-based loop index.
StepFn = typing.Callable[[typing.Any, jax.Array, typing.Any], tuple[typing.Any, typing.Any]]


@typing.runtime_checkable
class LoopedModel(typing.Protocol):
  """What eval, halting, lens and analysis need of a model. The state carried between loops may be any pytree
  (B x T x D for the paper's model, B x T x n x D for several residual streams); `final_hidden` maps it to the
  B x T x D hidden state that the head reads."""

  cfg: ModelConfig
  vocab_size: int

  def init(self, rng, seq_len: int = 8) -> dict:
    """A params pytree."""

  def loop_step(self, params, tokens_BxT, *, rng=None, per_layer: bool = False) -> tuple[typing.Any, StepFn]:
    """(state entering loop 1, step). rng enables dropout; per_layer makes step return every layer's output."""

  def final_hidden(self, params, state) -> jax.Array:
    """The B x T x D hidden state after a loop, as the head reads it."""

  def head(self, params, hidden_xD) -> jax.Array:
    """Final norm and the head tied to the token embedding: logits over the vocabulary."""


class LoopedBase:
  """The derived methods: one forward pass (a scan over `loop_step`) and its readouts. Subclasses are frozen
  dataclasses with fields `cfg` and `vocab_size` (hashable: compiled functions are cached per model).

  Two optional hooks have defaults here, so a kind overrides them only if it needs to: `loss` (the training
  objective; default the answer token's cross-entropy) and `exit_prob` (a learned per-loop exit probability,
  read by the `gate` halting policy; default none: `has_exit_gate` is False and the probability 0).

  A task whose answer is a sequence reads it at several positions (`read_pos` B x K): every readout at the answer
  position then has a slot axis K after B (`answer_logits` B x K x V, `loop_logits` R x B x K x V, ...).
  """

  has_exit_gate = False

  def loss(self, params, batch, n_loops: int, *, rng=None, label_smoothing: float = 0.0, n_active=None,
           scan: loop.Scan = loop.PLAIN):
    """(scalar training loss, accuracy) on a batch ({"tokens", "read_pos", "target"}) after n_loops loops (n_active
    of them in a program compiled for n_loops, when given); scan: see `loop.Scan`. A batch with `targets` (B x T,
    0 = none: a task that supervises every position) is scored by the mean cross-entropy over its supervised
    positions. A sequence answer (`read_pos` and `target` B x K) needs `targets`. The accuracy is the answer's
    (all of a sequence answer's slots right: `answer_correct`) either way."""
    if "targets" not in batch:
      logits_BxV = self.answer_logits(params, batch["tokens"], batch["read_pos"], n_loops, rng=rng,
                                      n_active=n_active, scan=scan)
      loss_B = answer_cross_entropy(logits_BxV, batch["target"], label_smoothing)
      return loss_B.mean(), jnp.mean(answer_correct(jnp.argmax(logits_BxV, -1), batch["target"]))
    state, _ = self.forward(params, batch["tokens"], n_loops, rng=rng, n_active=n_active, scan=scan)
    logits_BxTxV = self.head(params, self.final_hidden(params, state))
    supervised_BxT = batch["targets"] > 0
    loss_BxT = answer_cross_entropy(logits_BxTxV, batch["targets"], label_smoothing)
    loss = jnp.sum(jnp.where(supervised_BxT, loss_BxT, 0.0)) / jnp.maximum(supervised_BxT.sum(), 1)
    answer_B = jnp.argmax(gather_positions(logits_BxTxV, batch["read_pos"]), -1)
    return loss, jnp.mean(answer_correct(answer_B, batch["target"]))

  def exit_prob(self, params, hidden_BxD):
    """The probability of exiting after this loop given the answer position's hidden state: B (0 without a gate)."""
    del params
    return jnp.zeros(hidden_BxD.shape[:1], jnp.float32)

  def forward(self, params, tokens_BxT, n_loops: int, *, rng=None, readout=None, per_layer: bool = False,
              n_active=None, scan: loop.Scan = loop.PLAIN):
    """Runs R = n_loops loops. Returns (final state, per-loop readouts or None).

    `readout(state, layers_LxBxTxD or None)` is evaluated after every loop and its values come back stacked on a
    leading R axis; per_layer passes every layer's output to it. rng enables dropout. n_active (traced, <=
    n_loops) runs that many loops in a program compiled for n_loops; scan: see `loop.Scan`.
    """
    k_emb, k_loops = jax.random.split(rng) if rng is not None else (None, None)
    state, step = self.loop_step(params, tokens_BxT, rng=k_emb, per_layer=per_layer)
    return loop.scan_loops(step, state, n_loops, rng=k_loops, readout=readout, n_active=n_active,
                           scan=scan)

  def cached_forward(self, params, tokens_BxT, n_loops: int, cached):
    """The forward pass with cached attention (`looped.Cached`; decoding): (hidden B x T x D, the tokens' new keys
    and values by site, {"k", "v"}: L x B x T x H x K, with a leading R axis for the looped block's, "core", the
    state after every loop, stacked on a leading R axis)."""
    state, step, kv = self.loop_step(params, tokens_BxT, cached=cached)
    state, (kv_core, states) = loop.scan_loops(step, state, n_loops, readout=lambda state, new: (new, state))
    hidden_BxTxD, kv_end = self.final_hidden(params, state, cached)
    return hidden_BxTxD, {**kv, "core": kv_core, **kv_end}, states

  def answer_hidden(self, params, state, read_pos_B):
    """The hidden vector the head reads at each example's answer position: B x D (B x K x D for a sequence answer,
    read_pos B x K)."""
    return gather_positions(self.final_hidden(params, state), read_pos_B)

  def apply(self, params, tokens_BxT, n_loops: int, *, rng=None):
    """Logits B x T x V after n_loops loops."""
    state, _ = self.forward(params, tokens_BxT, n_loops, rng=rng)
    return self.head(params, self.final_hidden(params, state))

  def answer_logits(self, params, tokens_BxT, read_pos_B, n_loops: int, *, rng=None, n_active=None,
                    scan: loop.Scan = loop.PLAIN):
    """Logits B x V at each example's answer position (cheaper than all positions)."""
    state, _ = self.forward(params, tokens_BxT, n_loops, rng=rng, n_active=n_active, scan=scan)
    return self.head(params, self.answer_hidden(params, state, read_pos_B))

  def loop_logits(self, params, tokens_BxT, read_pos_B, n_loops: int):
    """Logits at the answer position after every loop: R x B x V (one forward pass for all R)."""
    readout = lambda state, _: self.head(params, self.answer_hidden(params, state, read_pos_B))
    return self.forward(params, tokens_BxT, n_loops, readout=readout)[1]

  def layer_logits(self, params, layers_LxBxTxD, read_pos_B):
    """The logit lens of every layer's output at the answer position: L x B x V."""
    return self.head(params, jax.vmap(gather_positions, (0, None))(layers_LxBxTxD, read_pos_B))

  def trace(self, params, tokens_BxT, read_pos_B, n_loops: int, per_layer: bool = False):
    """Per-loop analysis: `hidden` (R x B x T x D, the final hidden state), `logits` (R x B x V at the answer
    position) and, with per_layer, `layers` (R x L x B x T x D) and `layer_logits` (R x L x B x V)."""
    def readout(state, layers):
      hidden_BxTxD = self.final_hidden(params, state)
      out = {"hidden": hidden_BxTxD, "logits": self.head(params, gather_positions(hidden_BxTxD, read_pos_B))}
      if per_layer:
        out["layers"] = layers
        out["layer_logits"] = self.layer_logits(params, layers, read_pos_B)
      return out

    return self.forward(params, tokens_BxT, n_loops, readout=readout, per_layer=per_layer)[1]


def answer_cross_entropy(logits_xBxV, target_B, label_smoothing: float = 0.0):
  """Cross-entropy of the answer token over the whole vocabulary, per example (any leading axes): x B."""
  labels_xBxV = optax.smooth_labels(jax.nn.one_hot(target_B, logits_xBxV.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits_xBxV, jnp.broadcast_to(labels_xBxV, logits_xBxV.shape))


def gather_positions(h_BxTxD, pos_B):
  """h[b, pos[b]] for each b: B x D; for a sequence answer read at several positions (pos B x K), B x K x D."""
  b, d = h_BxTxD.shape[0], h_BxTxD.shape[-1]
  return jnp.take_along_axis(h_BxTxD, pos_B.reshape(b, -1, 1), axis=1).reshape(*pos_B.shape, d)


def answer_correct(answer_B, target_B):
  """Whether each example's answer is right: B. A sequence answer (B x K) is right if every slot is; a slot with
  target 0 is padding (a batch of answers of different lengths) and always counts as right."""
  hit_B = (answer_B == target_B) | (target_B == 0)
  return hit_B.reshape(hit_B.shape[0], -1).all(-1)


def last_slot(hidden_BxD):
  """A sequence answer's last slot, B x K x D -> B x D (its padding slots repeat its last position); B x D as is."""
  return hidden_BxD if hidden_BxD.ndim == 2 else hidden_BxD[:, -1]


def count_params(params) -> int:
  return sum(x.size for x in jax.tree_util.tree_leaves(params))


def params_checksum(params) -> float:
  """Sum of all parameters in float64: equal across runs only if the params are (all but surely) identical."""
  return float(sum(np.asarray(x, np.float64).sum() for x in jax.tree_util.tree_leaves(params)))
