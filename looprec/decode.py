"""Autoregressive generation for every model kind, with a KV cache whose layout across loops is a policy.

`generate` runs one compiled program per (model, policy, R, prompt length, tokens to write, greedy or sampled):
a `lax.scan` over positions, one token per row per step, with the model's depth loop (the same scan as training,
`LoopedBase.cached_forward`) inside. The prompt's positions are the prefill (their tokens are given), the rest
feed back the token chosen at the position before. A batch of prompts of one length decodes together.

The blocks run once per token (a prelude, a coda, the layers outside a training-free window) keep one cache each.
The looped block's ("core") keys and values are kept by the policy, named as `parse_policy` reads it:

  per_loop     a cache for every (layer, loop): exact, memory prop. to N R
  first_loop   loop 0's keys and values, read by every loop
  last_loop    the last loop's, read by every loop
  cycle:k      Huginn's zero-shot sharing: loop t reads and writes slot t mod k (min(k, R) slots)
  melt         one cache per layer, the loops' keys and values folded through a learned element-wise gate
               (`looprec.melt`; params["melt"] holds the gates)

With a halting policy (`generate_halting`, the policies of `looprec.halting`) each row of each token stops at
its own loop: every token runs the cap's loops (the batch stays one program, its cache every loop's keys and
values), and a row's token is the answer read at the loop the policy halts it at (`halting.decide` on the head's
logits after every loop), so for `per_loop` a halted token is the token fixed-depth decoding at that R writes.

A token always attends to its own keys and values of the loop it is in; the policy decides what it reads of the
earlier tokens. The prompt goes through the cache one token at a time like the tokens written, so a policy treats
both alike (as MELT's training does, `looprec.melt`); for `per_loop` that is exactly the uncached forward pass.
"""
from __future__ import annotations

import dataclasses
import functools
import re
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from looprec import halting
from looprec.config import ConfigError
from looprec.models.looped import Cached

POLICIES = ("per_loop", "first_loop", "last_loop", "cycle:k", "melt")


class DecodeError(ConfigError):
  """Bad decoding input (policy, prompt, a model without MELT gates): one line; the CLI exits 2 on it."""


@dataclasses.dataclass(frozen=True)
class Policy:
  """How the looped block's keys and values are cached across loops (see the module docstring)."""

  name: str
  k: int = 0  # cycle's period

  def slots(self, n_loops: int) -> int:
    """Caches kept for the looped block."""
    return {"per_loop": n_loops, "cycle": min(self.k, n_loops)}.get(self.name, 1)

  def slot(self, t):
    """The slot that loop t reads."""
    return {"per_loop": t, "cycle": t % max(self.k, 1)}.get(self.name, 0)

  def keep(self, new_RxLx, gates=None):
    """The slots written from the loops' new keys (or values) of the tokens: R x L x ... -> slots x L x ..."""
    n_loops = new_RxLx.shape[0]
    if self.name == "per_loop":
      return new_RxLx
    if self.name == "first_loop":
      return new_RxLx[:1]
    if self.name == "last_loop":
      return new_RxLx[-1:]
    if self.name == "cycle":  # slot s holds the last loop t with t mod k = s
      return new_RxLx[jnp.array([s + self.k * ((n_loops - 1 - s) // self.k) for s in range(self.slots(n_loops))])]
    return melt_fold(new_RxLx, gates)[None]


def parse_policy(spec: str) -> Policy:
  """A policy from its name (`cycle:k` with k >= 1); DecodeError otherwise."""
  m = re.fullmatch(r"cycle:(-?\d+)", spec)
  if m:
    if int(m.group(1)) < 1:
      raise DecodeError(f"decode policy {spec!r}: cycle:k needs k >= 1")
    return Policy("cycle", int(m.group(1)))
  if spec not in POLICIES or spec == "cycle:k":
    raise DecodeError(f"decode policy {spec!r} is not one of {', '.join(POLICIES)}")
  return Policy(spec)


def melt_fold(new_RxLxBxTxHxK, gate_LxHxK):
  """MELT's shared cache entry after R loops: c_0 = x_0, c_t = g c_{t-1} + (1 - g) x_t, g = sigmoid(gate)
  element-wise per layer: L x B x T x H x K."""
  g = jax.nn.sigmoid(gate_LxHxK)[:, None, None].astype(jnp.float32)
  step = lambda c, x: (g * c + (1 - g) * x.astype(jnp.float32), None)
  c, _ = jax.lax.scan(step, new_RxLxBxTxHxK[0].astype(jnp.float32), new_RxLxBxTxHxK[1:])
  return c.astype(new_RxLxBxTxHxK.dtype)


def kv_dtype(model):
  return jnp.bfloat16 if model.cfg.dtype == "bfloat16" else jnp.float32


def empty_cache(model, policy: Policy, n_loops: int, batch: int, length: int) -> dict:
  """{site: {"k", "v"}: slots x L x B x S x H x K zeros}; the looped block ("core") has the policy's slots, the
  others one."""
  cfg = model.cfg
  shape = lambda site, n: (policy.slots(n_loops) if site == "core" else 1, n, batch, length, cfg.n_heads,
                           cfg.d_model // cfg.n_heads)
  return {site: {name: jnp.zeros(shape(site, n), kv_dtype(model)) for name in ("k", "v")}
          for site, n in model.cache_layers().items()}


def bytes_per_token(model, policy: Policy | str, n_loops: int) -> int:
  """The cache's bytes per token of context (every site, keys and values), from its real layout; policy a
  `Policy` or its name."""
  pol = parse_policy(policy) if isinstance(policy, str) else policy
  cache = jax.eval_shape(lambda: empty_cache(model, pol, n_loops, 1, 1))
  return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(cache))


def reader(cache: dict, policy: Policy):
  """past(site, t) of `looped.Cached` over a cache of this policy's layout."""
  def past(site, t):
    slot = policy.slot(t) if site == "core" else 0
    return jax.tree_util.tree_map(lambda c: c[slot], cache[site])
  return past


def write(cache: dict, new: dict, policy: Policy, start, gates=None) -> dict:
  """The cache with the tokens' new keys and values (kept by the policy for "core") at positions start.."""
  def put(site, name, c):
    x = policy.keep(new[site][name], None if gates is None else gates[name]) if site == "core" else new[site][name][None]
    return jax.lax.dynamic_update_slice_in_dim(c, x.astype(c.dtype), start, axis=3)
  return {site: {name: put(site, name, c) for name, c in kv.items()} for site, kv in cache.items()}


def cached_step(model, params, past, key_ok_BxS, token_B, start, n_loops: int):
  """One token per row at position `start` through the model after the cache (`past`, `looped.Cached`'s):
  (hidden B x D, its new keys and values by site, the state after every loop, valid keys with it written)."""
  tokens_Bx1 = token_B[:, None]
  hidden_Bx1xD, new, states = model.cached_forward(params, tokens_Bx1, n_loops, Cached(start, past, key_ok_BxS))
  key_ok_BxS = jax.lax.dynamic_update_slice_in_dim(key_ok_BxS, tokens_Bx1 != 0, start, axis=1)
  return hidden_Bx1xD[:, 0], new, states, key_ok_BxS


def _choose(logits_BxV, key, temperature: float):
  """Greedy (temperature 0) or sampled next tokens: B."""
  if temperature == 0:
    return jnp.argmax(logits_BxV, -1).astype(jnp.int32)
  return jax.random.categorical(key, logits_BxV / temperature).astype(jnp.int32)


def _halted(model, params, states, halt: halting.Policy, answers: int | None):
  """(token_B, loops_B): each row's answer at the loop `halt` stops it (at the latest the last), read from the
  state after every loop (R x B x 1 x ...)."""
  hidden_RxBxD = jax.vmap(lambda s: model.final_hidden(params, s))(states)[:, :, 0]
  exit_RxB = jax.vmap(lambda h: model.exit_prob(params, h))(hidden_RxBxD)
  loops_B, token_B = halting.decide(halt, model.head(params, hidden_RxBxD), hidden_RxBxD, exit_RxB, answers)
  return token_B.astype(jnp.int32), loops_B


@functools.partial(jax.jit, static_argnames=("model", "policy", "n_loops", "n_new", "temperature", "halt",
                                             "answers"))
def _program(params, prompt_BxP, key, *, model, policy: Policy, n_loops: int, n_new: int, temperature: float,
             halt: halting.Policy | None = None, answers: int | None = None):
  """A scan over positions: the prompt's tokens are given (the prefill), then each chosen token is fed back;
  (tokens B x n_new, the loops each was read at B x n_new: n_loops without `halt`)."""
  b, p = prompt_BxP.shape
  length = p + n_new - 1  # the last token written never enters the cache
  carry = (empty_cache(model, policy, n_loops, b, length), jnp.zeros((b, length), bool),
           jnp.zeros((b,), jnp.int32), key)

  def body(carry, i):
    cache, key_ok_BxS, token_B, key = carry
    token_B = jnp.where(i < p, jax.lax.dynamic_index_in_dim(prompt_BxP, jnp.minimum(i, p - 1), 1, False), token_B)
    hidden_BxD, new, states, key_ok_BxS = cached_step(model, params, reader(cache, policy), key_ok_BxS, token_B, i,
                                                      n_loops)
    cache = write(cache, new, policy, i, params.get("melt"))
    key, sub = jax.random.split(key)
    if halt is None:
      token_B, loops_B = _choose(model.head(params, hidden_BxD), sub, temperature), jnp.full((b,), n_loops)
    else:
      token_B, loops_B = _halted(model, params, states, halt, answers)
    return (cache, key_ok_BxS, token_B, key), (token_B, loops_B)

  _, (out_NxB, loops_NxB) = jax.lax.scan(body, carry, jnp.arange(length))
  return out_NxB[p - 1:].T, loops_NxB[p - 1:].T


@functools.partial(jax.jit, static_argnames=("model", "policy", "n_loops"))
def teacher_forced(params, tokens_BxT, *, model, policy: Policy, n_loops: int):
  """Next-token logits B x T x V of given sequences fed through the cache one token at a time (what decoding
  computes at each position when it wrote these tokens)."""
  b, t_len = tokens_BxT.shape

  def body(carry, i):
    cache, key_ok_BxS = carry
    token_B = jax.lax.dynamic_index_in_dim(tokens_BxT, i, 1, False)
    hidden_BxD, new, _, key_ok_BxS = cached_step(model, params, reader(cache, policy), key_ok_BxS, token_B, i,
                                                 n_loops)
    return (write(cache, new, policy, i, params.get("melt")), key_ok_BxS), model.head(params, hidden_BxD)

  carry = (empty_cache(model, policy, n_loops, b, t_len), jnp.zeros((b, t_len), bool))
  return jnp.moveaxis(jax.lax.scan(body, carry, jnp.arange(t_len))[1], 0, 1)


def check(model, params, prompt_len: int, n_new: int, policy: Policy):
  """DecodeError for a prompt that does not fit the model's positions or melt without trained gates."""
  if prompt_len < 1 or n_new < 1:
    raise DecodeError(f"decoding needs a prompt and tokens to write, got {prompt_len} and {n_new}")
  if prompt_len + n_new > model.cfg.max_positions:
    raise DecodeError(f"a prompt of {prompt_len} tokens and {n_new} to write exceed model.max_positions="
                      f"{model.cfg.max_positions}")
  if policy.name == "melt" and "melt" not in params:
    raise DecodeError("decode policy melt: the model has no trained MELT gates; run the MELT phase first "
                      "(looprec.melt.train)")


def generate(model, params, prompt_BxP, n_new: int, n_loops: int, policy: str = "per_loop", *,
             temperature: float = 0.0, rng=None):
  """The n_new tokens (B x n_new) each prompt row continues with, R = n_loops loops per token; greedy at
  temperature 0, else sampled (rng)."""
  pol = parse_policy(policy)
  check(model, params, prompt_BxP.shape[1], n_new, pol)
  key = rng if rng is not None else jax.random.PRNGKey(0)
  return _program(params, jnp.asarray(prompt_BxP, jnp.int32), key, model=model, policy=pol, n_loops=n_loops,
                  n_new=n_new, temperature=float(temperature))[0]


def generate_halting(model, params, prompt_BxP, n_new: int, cap: int, policy: str = "per_loop",
                     halt: str = "kl_entropy", answers: int | None = None):
  """Greedy decoding with per-token, per-row adaptive depth: (tokens B x n_new, the loop each was read at
  B x n_new), at most `cap` loops; halt: a `halting.parse_policy` spec (answers: the answer-set size a relative
  bound needs). Models whose only cached block is the looped one (the head reads the looped block's state)."""
  pol, hpol = parse_policy(policy), halting.parse_policy(halt)
  check(model, params, prompt_BxP.shape[1], n_new, pol)
  if set(model.cache_layers()) != {"core"}:
    raise DecodeError(f"adaptive depth while decoding: model.kind={model.cfg.kind} runs cached blocks besides the "
                      "looped one; it needs a model whose head reads the looped block's state")
  return _program(params, jnp.asarray(prompt_BxP, jnp.int32), jax.random.PRNGKey(0), model=model, policy=pol,
                  n_loops=cap, n_new=n_new, temperature=0.0, halt=hpol, answers=answers)


def generate_uncached(model, params, prompt_BxP, n_new: int, n_loops: int):
  """Greedy generation by full recomputation (no cache): the reference `per_loop` must equal. B x n_new."""
  tokens_BxT = jnp.asarray(prompt_BxP, jnp.int32)
  for _ in range(n_new):
    logits_BxV = model.apply(params, tokens_BxT, n_loops)[:, -1]
    tokens_BxT = jnp.concatenate([tokens_BxT, jnp.argmax(logits_BxV, -1).astype(jnp.int32)[:, None]], axis=1)
  return tokens_BxT[:, prompt_BxP.shape[1]:]


def kl_to_teacher(model, teacher, params, policy: str, prompt_BxP, path_BxK, n_loops: int) -> float:
  """Mean KL(teacher with per_loop || params with the policy) over the positions that write the path, both fed the
  true path (teacher forcing through the cache)."""
  tokens_BxT = jnp.concatenate([jnp.asarray(prompt_BxP, jnp.int32), jnp.asarray(path_BxK, jnp.int32)[:, :-1]], 1)
  first = prompt_BxP.shape[1] - 1
  logp = lambda p, pol: jax.nn.log_softmax(teacher_forced(p, tokens_BxT, model=model, n_loops=n_loops,
                                                          policy=parse_policy(pol))[:, first:])
  t, s = logp(teacher, "per_loop"), logp(params, policy)
  return float(jnp.mean(jnp.sum(jnp.exp(t) * (t - s), -1)))


def tokens_per_second(model, params, policy: str, batch: int, n_loops: int, n_new: int, repeats: int = 3,
                      prompt_len: int = 4) -> float:
  """Greedy decoding speed: batch x n_new tokens over the median wall time of `repeats` calls of the compiled
  program (the first call, which compiles, is not timed); random prompts."""
  prompt = np.random.default_rng(0).integers(1, model.vocab_size, (batch, prompt_len)).astype(np.int32)
  generate(model, params, prompt, n_new, n_loops, policy).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    generate(model, params, prompt, n_new, n_loops, policy).block_until_ready()
    times.append(time.perf_counter() - start)
  return batch * n_new / statistics.median(times)
