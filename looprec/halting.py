"""Adaptive halting at inference: pluggable stopping rules inside a `lax.while_loop` that stops computing once
every example of the batch has halted (or the cap is hit). Evaluation only.

After loop t (1-based) each example gets signals: `kl` = KL(p_t || p_{t-1}), `entropy` = H(p_t) (nats), `latent`
= ||h_t - h_{t-1}|| / ||h_t|| at the answer position, `streak` = loops in a row the answer (argmax) has not
changed, `answer`, and `exit_cdf` = 1 - prod_{j<=t} (1 - lambda_j), the CDF of a learned exit gate's
distribution (`model.exit_prob`; 0 for a model without a gate). At loop 1 there is no previous loop: kl and
latent are +inf, streak is 0. A policy stops an example at the first loop where all of its tests pass, else at
the cap; the example keeps that loop's answer. Thresholds are strict (`kl < eps`, `entropy < max_entropy`,
`latent < delta`, `exit_cdf > q`) and non-negative, so eps, max_entropy or delta = 0 and q = 1 are never met and
the policy runs every example to the cap, exactly fixed R = cap (for `argmax`, `streak >= n` with n >= cap is
never met); +inf (q = 0 for a gate that ever fires) is met as soon as the signal exists.

    pol = policy("kl_entropy", eps=1e-3, max_entropy=3.0)      # or parse_policy("kl_entropy:eps=1e-3")
    pol = policy("kl_entropy_rel", max_entropy_frac=0.5)        # entropy < 0.5 ln |answers|; thresholds(answers)
    loops_B, answer_B, executed = compiled(model, mesh)(params, tokens_BxT, read_pos_B, pol.thresholds(), 16)
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from looprec import eval as evaluation, loop, sharding
from looprec.config import ConfigError, choices
from looprec.models.base import last_slot

# Each parameter is one test on one signal; a policy stops an example where all of its tests pass.
TESTS = {
    "eps": lambda s, v: s["kl"] < v,
    "max_entropy": lambda s, v: s["entropy"] < v,
    "delta": lambda s, v: s["latent"] < v,
    "n": lambda s, v: s["streak"] >= v,
    "q": lambda s, v: s["exit_cdf"] > v,
}
# A bound relative to the answer set: max_entropy_frac x ln |answers| is applied as max_entropy (so the bound
# scales with the entropy of an undecided guess); PAPER_FRAC gives the paper's 3.0 nats at its 200 entities.
RELATIVE = {"max_entropy_frac": "max_entropy"}
PAPER_FRAC = 3.0 / math.log(200)
# name -> default parameters (which also say which tests the policy applies)
RULES = {
    "kl_entropy": {"eps": 1e-3, "max_entropy": 3.0},  # the paper's rule
    "kl_entropy_rel": {"eps": 1e-3, "max_entropy_frac": PAPER_FRAC},  # the paper's rule, bound relative to ln |answers|
    "kl": {"eps": 1e-3},
    "entropy": {"max_entropy": 3.0},
    "latent": {"delta": 1e-2},
    "argmax": {"n": 2},
    "gate": {"q": 0.5},  # Ouro: exit where the gate's CDF passes q (models with an exit gate)
}
DEFAULT_CAP = 16


@dataclasses.dataclass(frozen=True)
class Policy:
  """A rule of RULES with its parameters."""

  name: str
  params: tuple  # ((key, value), ...) in RULES order

  def thresholds(self, answers: int | None = None):
    """(values, used): one float and one bool per test of TESTS, the traced form every policy compiles to.
    answers: the size of the answer set, which a relative bound (RELATIVE) needs."""
    params = dict(self.params)
    for rel, test in RELATIVE.items():
      if rel in params:
        if not answers or answers < 2:
          raise ConfigError(f"halting policy {self}: {rel} needs the answer-set size (>= 2), got {answers} (an "
                            "evaluation split carries it as `n_answers`, data.with_answer_set)")
        params[test] = params.pop(rel) * math.log(answers)
    return (jnp.array([float(params.get(k, 0.0)) for k in TESTS], jnp.float32),
            jnp.array([k in params for k in TESTS]))

  def __str__(self):
    return self.name + "".join(f"{',' if i else ':'}{k}={v:g}" for i, (k, v) in enumerate(self.params))


def stop(signals: dict, values, used):
  """Which examples stop: every used test passes."""
  return functools.reduce(jnp.logical_and, [test(signals, values[i]) | ~used[i]
                                            for i, test in enumerate(TESTS.values())])


def policy(name: str, **params) -> Policy:
  """The named policy with its defaults overridden by params; ConfigError on unknown names or bad values."""
  if name not in RULES:
    raise ConfigError(f"unknown halting policy {name!r} (have {choices(name, RULES)})")
  defaults = RULES[name]
  for key, value in params.items():
    if key not in defaults:
      raise ConfigError(f"halting policy {name!r} has no parameter {key!r} (have {choices(key, defaults)})")
    if key == "n":
      if not float(value).is_integer() or value < 1:
        raise ConfigError(f"{name}: n={value} must be an integer >= 1")
    elif key == "q" and not 0 <= value <= 1:
      raise ConfigError(f"{name}: q={value} must be in [0, 1]")
    elif math.isnan(value) or value < 0:
      raise ConfigError(f"{name}: {key}={value} must be >= 0")
  merged = {**defaults, **params}
  return Policy(name, tuple((k, int(v) if k == "n" else float(v)) for k, v in merged.items()))


def applies(rule: str, model) -> bool:
  """Whether a halting rule can run on a model: `gate` needs an exit gate, the others any model."""
  return rule != "gate" or model.has_exit_gate


def applicable(model) -> list[str]:
  """The rules of RULES that apply to a model (`applies`)."""
  return [name for name in RULES if applies(name, model)]


def parse_policy(spec: str) -> Policy:
  """`name` or `name:key=value,key=value`, e.g. `kl_entropy:eps=1e-4,max_entropy=2`."""
  name, _, rest = spec.partition(":")
  params = {}
  for item in filter(None, rest.split(",")):
    key, sep, text = item.partition("=")
    try:
      params[key] = float(text if sep else "?")
    except ValueError:
      raise ConfigError(f"halting policy {spec!r}: {item!r} is not key=number") from None
  return policy(name, **params)


def init_signals(answer_shape: tuple, vocab: int, d_model: int) -> dict:
  """What `observe` carries from one loop to the next, before loop 1 (answer_shape: B, or B x K for a sequence)."""
  batch = answer_shape[0]
  slots = math.prod(answer_shape[1:])
  return {"logp": jnp.zeros((*answer_shape, vocab)), "hidden": jnp.zeros((batch, slots * d_model)),
          "answer": jnp.zeros(answer_shape, jnp.int32), "streak": jnp.zeros((batch,), jnp.int32),
          "survive": jnp.ones((batch,))}


def _worst(x_B):
  """The largest value over a sequence answer's slots: B x K -> B (B as is)."""
  return x_B.reshape(x_B.shape[0], -1).max(-1)


def observe(prev: dict, t, logits_BxV, hidden_BxD, exit_B) -> dict:
  """The signals after loop t (0-based) from its answer logits, hidden state and exit probability; also the next
  `prev`. A sequence answer (logits B x K x V, hidden B x K x D) signals its least settled slot: the largest kl and
  entropy, latent over all slots' hidden vectors, streak the loops in a row no slot's answer changed."""
  logp_BxV = jax.nn.log_softmax(logits_BxV.astype(jnp.float32), -1)
  p_BxV = jnp.exp(logp_BxV)
  first = t == 0
  entropy_B = _worst(jnp.maximum(-jnp.sum(jnp.where(p_BxV > 0, p_BxV * logp_BxV, 0.0), -1), 0.0))
  kl_B = _worst(jnp.maximum(jnp.sum(jnp.where(p_BxV > 0, p_BxV * (logp_BxV - prev["logp"]), 0.0), -1), 0.0))
  hidden_BxD = hidden_BxD.astype(jnp.float32).reshape(hidden_BxD.shape[0], -1)
  change_B = jnp.linalg.norm(hidden_BxD - prev["hidden"], axis=-1) / jnp.maximum(
      jnp.linalg.norm(hidden_BxD, axis=-1), 1e-30)
  answer_B = jnp.argmax(logp_BxV, -1).astype(jnp.int32)
  changed_B = (answer_B != prev["answer"]).reshape(answer_B.shape[0], -1).any(-1)
  streak_B = jnp.where(first | changed_B, 0, prev["streak"] + 1)
  survive_B = prev["survive"] * (1.0 - exit_B.astype(jnp.float32))
  return {"kl": jnp.where(first, jnp.inf, kl_B), "entropy": entropy_B,
          "latent": jnp.where(first, jnp.inf, change_B), "streak": streak_B, "answer": answer_B,
          "exit_cdf": 1.0 - survive_B, "logp": logp_BxV, "hidden": hidden_BxD, "survive": survive_B}


def _record(thresholds, carry: dict, t, logits_BxV, hidden_BxD, exit_B, cap):
  """One loop's bookkeeping: signals, which examples stop, their loop count and answer."""
  s = observe(carry["prev"], t, logits_BxV, hidden_BxD, exit_B)
  stop_B = stop(s, *thresholds) | (t + 1 >= cap)
  new_B = stop_B & ~carry["halted"]
  prev = {k: s[k] for k in ("logp", "hidden", "answer", "streak", "survive")}
  new_answer_B = new_B.reshape(-1, *[1] * (s["answer"].ndim - 1))
  return {"prev": prev, "halted": carry["halted"] | stop_B, "loops": jnp.where(new_B, t + 1, carry["loops"]),
          "answer": jnp.where(new_answer_B, s["answer"], carry["answer"])}


def _start(answer_shape: tuple, vocab: int, d_model: int) -> dict:
  zeros_B = jnp.zeros(answer_shape[:1], jnp.int32)
  return {"prev": init_signals(answer_shape, vocab, d_model), "halted": jnp.zeros(answer_shape[:1], bool),
          "loops": zeros_B, "answer": jnp.zeros(answer_shape, jnp.int32)}


def halt_batch(model, params, tokens_BxT, read_pos_B, thresholds, max_loops):
  """Loops until every example halts by `thresholds` (Policy.thresholds()) or max_loops loops have run (both
  may be traced). Returns (loops_B: the loop each example halted at, answer_B: its answer there (B x K for a
  sequence answer), executed: the loops the batch actually ran). A gate reads a sequence answer's last slot."""
  e_BxTxD, step = model.loop_step(params, tokens_BxT)

  def update(state, t, carry):
    hidden_BxD = model.answer_hidden(params, state, read_pos_B)
    carry = _record(thresholds, carry, t, model.head(params, hidden_BxD), hidden_BxD,
                    model.exit_prob(params, last_slot(hidden_BxD)), max_loops)
    return carry, jnp.all(carry["halted"])

  start = _start(read_pos_B.shape, model.vocab_size, model.cfg.d_model)
  _, carry, executed = loop.while_loops(step, e_BxTxD, max_loops, start, update)
  return carry["loops"], carry["answer"], executed


def decide(pol: Policy, logits_RxBxV, hidden_RxBxD=None, exit_RxB=None, answers: int | None = None):
  """The same rule applied to recorded per-loop logits (cap = R): (loops_B, answer_B). For checks and traces."""
  r, answer_shape, v = logits_RxBxV.shape[0], logits_RxBxV.shape[1:-1], logits_RxBxV.shape[-1]
  if hidden_RxBxD is None:
    hidden_RxBxD = jnp.ones((r, *answer_shape, 1))
  if exit_RxB is None:
    exit_RxB = jnp.zeros((r, answer_shape[0]))

  def body(carry, xs):
    t, logits_BxV, hidden_BxD, exit_B = xs
    return _record(pol.thresholds(answers), carry, t, logits_BxV, hidden_BxD, exit_B, r), None

  xs = (jnp.arange(r), logits_RxBxV, hidden_RxBxD, exit_RxB)
  carry, _ = jax.lax.scan(body, _start(answer_shape, v, hidden_RxBxD.shape[-1]), xs)
  return carry["loops"], carry["answer"]


@functools.lru_cache(maxsize=None)
def compiled(model, mesh):
  """jit of `halt_batch` for a model: policy thresholds and cap are arguments, so one compile serves all of them;
  params in their own layout (replicated, or split by `sharding.state_shardings`)."""
  data, rep = sharding.data_sharded(mesh), sharding.replicated(mesh)
  return jax.jit(functools.partial(halt_batch, model), in_shardings=(None, data, data, rep, rep),
                 out_shardings=(rep, rep, rep))  # replicated: every process reads all (multi-host)


def answer_set_size(examples: dict) -> int | None:
  """The answer-set size an evaluation split carries (`n_answers`, `data.with_answer_set`), or None."""
  n_answers = examples.get("n_answers")
  return int(np.max(n_answers)) if n_answers is not None and len(n_answers) else None


def halt_examples(model, params, examples: dict, pol: Policy, max_loops: int, mesh,
                  batch_size: int = 256) -> dict:
  """Per example `loops` (where it halted) and `answer` (its prediction there); per batch `executed` loops. A
  bound relative to the answer set reads its size from the examples (`answer_set_size`)."""
  fn, thresholds = compiled(model, mesh), pol.thresholds(answer_set_size(examples))
  loops, predicted, executed = [], [], []
  run = lambda t, r, _: fn(params, t, r, thresholds, max_loops)
  for (loops_B, answer_B, ran), size in evaluation.batches(run, examples, mesh, batch_size):
    loops.append(loops_B[:size])
    predicted.append(answer_B[:size])
    executed.append(int(ran))
  return {"loops": np.concatenate(loops), "answer": np.concatenate(predicted), "executed": np.array(executed)}
