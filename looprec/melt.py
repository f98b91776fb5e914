"""MELT (Memory-Efficient Looped Transformer, Vendrell et al. 2026, arXiv 2605.07721): the looped block keeps one
KV cache per layer, shared by every loop and updated through a learned element-wise gate, trained from a model
with per-loop caches by chunk-wise distillation in two phases. No code of the paper is public and the text we
could read gives the design, not its equations; what is implemented here (and where it may depart) is in
docs/decisions.md:

  gate          per looped layer, element-wise logits (head x channel) for keys and for values; a token's cache
                entry is folded over the loops, c_0 = x_0, c_t = g c_{t-1} + (1 - g) x_t, g = sigmoid(logit)
                (`decode.melt_fold`), initialised at logit -2 (close to the last loop's keys and values)
  chunks        one token: the sequence goes through the cache position by position (`decode.cached_step`), so
                training sees exactly what decoding sees
  (a) transition  the earlier tokens' keys and values read at loop t are a (per-loop cache)[t] + (1 - a) (shared
                cache), a falling linearly from 1 to 0 over the phase; loss: KL(teacher || student) of the logits
  (b) distillation  a = 0; loss: the KL plus beta x the mean squared difference of the state after every loop
                (the output of that loop's attention and MLP layers) between student and teacher

The teacher is the starting model (frozen params, the uncached forward pass: per_loop caching exactly); the
student starts from the same params and trains them and the gates. The gates live in params["melt"].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from looprec import decode

GATE_INIT = -2.0


def init_gates(model, logit: float = GATE_INIT) -> dict:
  """{"k", "v"}: L x H x K gate logits for the looped block's layers."""
  cfg = model.cfg
  shape = (model.cache_layers()["core"], cfg.n_heads, cfg.d_model // cfg.n_heads)
  return {"k": jnp.full(shape, logit), "v": jnp.full(shape, logit)}


def _float_leaves(states):
  return [x for x in jax.tree_util.tree_leaves(states) if jnp.issubdtype(x.dtype, jnp.floating)]


def student_forward(model, params, tokens_BxT, n_loops: int, alpha):
  """The MELT student over a sequence, one-token chunks: (logits B x T x V, the state after every loop: float
  leaves R x B x T x ...). Loop t reads alpha (per-loop cache)[t] + (1 - alpha) (shared cache)."""
  b, t_len = tokens_BxT.shape
  per_loop, melt = decode.parse_policy("per_loop"), decode.parse_policy("melt")
  caches = (decode.empty_cache(model, per_loop, n_loops, b, t_len), decode.empty_cache(model, melt, n_loops, b, t_len))

  def body(carry, i):
    (full, shared), key_ok_BxS = carry
    read_full, read_shared = decode.reader(full, per_loop), decode.reader(shared, melt)
    mix = lambda a, c: alpha * a + (1 - alpha) * c
    past = lambda site, t: jax.tree_util.tree_map(mix, read_full(site, t), read_shared(site, t))
    token_B = jax.lax.dynamic_index_in_dim(tokens_BxT, i, 1, False)
    hidden_BxD, new, states, key_ok_BxS = decode.cached_step(model, params, past, key_ok_BxS, token_B, i, n_loops)
    full = decode.write(full, new, per_loop, i)
    shared = decode.write(shared, new, melt, i, params["melt"])
    return ((full, shared), key_ok_BxS), (model.head(params, hidden_BxD), _float_leaves(states))

  _, (logits_TxBxV, states) = jax.lax.scan(body, (caches, jnp.zeros((b, t_len), bool)), jnp.arange(t_len))
  states = [jnp.moveaxis(x[:, :, :, 0], 0, 2) for x in states]  # T x R x B x 1 x ... -> R x B x T x ...
  return jnp.moveaxis(logits_TxBxV, 0, 1), states


def teacher_forward(model, params, tokens_BxT, n_loops: int):
  """The per-loop-cache model (the uncached forward pass): (logits B x T x V, float leaves of every loop's state)."""
  state, states = model.forward(params, tokens_BxT, n_loops, readout=lambda s, _: s)
  return model.head(params, model.final_hidden(params, state)), _float_leaves(states)


def distill_loss(params, teacher, batch, alpha, beta, *, model, n_loops: int):
  """KL(teacher || student) over the positions with a target, plus beta x the per-loop state alignment."""
  logits_BxTxV, states = student_forward(model, params, batch["tokens"], n_loops, alpha)
  t_logits_BxTxV, t_states = teacher
  live_BxT = batch["targets"] >= 0
  n = jnp.maximum(live_BxT.sum(), 1)
  t_logp = jax.nn.log_softmax(t_logits_BxTxV)
  kl_BxT = jnp.sum(jnp.exp(t_logp) * (t_logp - jax.nn.log_softmax(logits_BxTxV)), -1)
  align = sum(jnp.mean((s - ts) ** 2) for s, ts in zip(states, t_states))
  kl = jnp.sum(kl_BxT * live_BxT) / n
  return kl + beta * align, kl


def train(model, params, task, n_loops: int, transition_steps: int, distill_steps: int, batch_size: int,
          lr: float = 1e-3, beta: float = 1.0) -> tuple[dict, list]:
  """Both phases on the generation task's training sequences (`generation.GenerationTask`). Returns (params with
  trained gates in params["melt"], the KL after each step)."""
  teacher_params = params
  student = {**params, "melt": init_gates(model)}
  tx = optax.adam(lr)
  opt = tx.init(student)

  @jax.jit
  def step(student, opt, batch, alpha, beta):
    teacher = jax.lax.stop_gradient(teacher_forward(model, teacher_params, batch["tokens"], n_loops))
    grad_fn = jax.value_and_grad(distill_loss, has_aux=True)
    (_, kl), grads = grad_fn(student, teacher, batch, alpha, beta, model=model, n_loops=n_loops)
    updates, opt = tx.update(grads, opt, student)
    return optax.apply_updates(student, updates), opt, kl

  kls = []
  for s in range(transition_steps + distill_steps):
    ex = task.train_examples(task.curriculum.last, np.arange(s * batch_size, (s + 1) * batch_size))
    batch = {"tokens": ex["tokens"], "targets": ex["targets"]}
    alpha = max(0.0, 1.0 - (s + 1) / transition_steps) if s < transition_steps else 0.0
    student, opt, kl = step(student, opt, batch, jnp.float32(alpha), jnp.float32(0.0 if s < transition_steps else beta))
    kls.append(float(kl))
  return student, kls
