"""A looped model with a learned exit gate (`model.kind=exit_gate`; Ouro / LoopLM, Zhu et al. 2025).

After every loop t a gate reads the answer position's final hidden state h_t (through the final norm) and gives
an exit probability lambda_t = sigmoid(w . norm(h_t) + b). Over R loops the exit distribution is
p(t) = lambda_t prod_{j<t} (1 - lambda_j) for t < R, and p(R) = prod_{j<R} (1 - lambda_j) (the remaining mass).
Training minimises sum_t p(t) L_t - beta H(p) per example (L_t: the answer's cross-entropy after loop t,
beta = model.exit_beta), so the gate learns where the answer is good enough and the entropy term keeps it from
collapsing onto one loop. At inference the `gate` halting policy stops an example once the exit CDF
1 - prod_{j<=t} (1 - lambda_j) exceeds q (looprec.halting). Begin / end blocks as in prelude_core_coda.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from looprec import loop
from looprec.config import ConfigError, ModelConfig, register_kind
from looprec.models import prelude_core_coda
from looprec.models.base import answer_correct, answer_cross_entropy, last_slot


def exit_distribution(lam_RxB):
  """p(t) over R loops from the per-loop exit probabilities (the last loop takes the remaining mass): R x B."""
  survive_RxB = jnp.cumprod(1.0 - lam_RxB, axis=0)
  before_RxB = jnp.concatenate([jnp.ones_like(lam_RxB[:1]), survive_RxB[:-1]])
  p_RxB = lam_RxB * before_RxB
  return p_RxB.at[-1].set(before_RxB[-1])


@dataclasses.dataclass(frozen=True)
class Options(prelude_core_coda.Options):
  """prelude_core_coda's, and the weight of the exit entropy."""

  exit_beta: float = 0.1  # weight of the exit distribution's entropy in the loss
  reads_every_loop = True  # the loss reads the exit probability and the answer after every loop

  def validate(self, cfg: ModelConfig):
    super().validate(cfg)
    if self.exit_beta < 0:
      raise ConfigError(f"model.exit_beta={self.exit_beta} must be >= 0")


@register_kind("exit_gate", Options)
@dataclasses.dataclass(frozen=True)
class ExitGate(prelude_core_coda.PreludeCoreCoda):
  cfg: ModelConfig
  vocab_size: int

  has_exit_gate = True

  def init(self, rng, seq_len: int = 8) -> dict:
    params = super().init(rng, seq_len)
    params["exit"] = {"kernel": jax.random.normal(jax.random.fold_in(rng, 3), (self.cfg.d_model,)) * self.cfg.init_std,
                      "bias": jnp.zeros(())}
    return params

  def exit_prob(self, params, hidden_BxD):
    h_BxD = nn.LayerNorm(self.cfg.ln_eps).apply({"params": params["final_norm"]}, hidden_BxD.astype(jnp.float32))
    return jax.nn.sigmoid(h_BxD @ params["exit"]["kernel"] + params["exit"]["bias"])

  def loss(self, params, batch, n_loops: int, *, rng=None, label_smoothing: float = 0.0, n_active=None,
           scan: loop.Scan = loop.PLAIN):
    """(sum_t p(t) L_t - beta H(p), averaged over the batch; accuracy after the last loop). It reads every loop,
    so it needs a static loop count (train.loop_programs=per_r; the config refuses `one`). It reads the answer only
    (a batch's every-position `targets` are not used); the gate reads a sequence answer's last slot."""
    if n_active is not None:
      raise ValueError("model.kind=exit_gate reads every loop: it needs train.loop_programs=per_r")

    def readout(state, _):
      hidden_BxD = self.answer_hidden(params, state, batch["read_pos"])
      return self.head(params, hidden_BxD), self.exit_prob(params, last_slot(hidden_BxD))

    _, (logits_RxBxV, lam_RxB) = self.forward(params, batch["tokens"], n_loops, rng=rng, readout=readout,
                                              scan=scan)
    p_RxB = exit_distribution(lam_RxB)
    loss_RxB = answer_cross_entropy(logits_RxBxV, batch["target"], label_smoothing)
    if batch["target"].ndim > 1:  # a sequence answer: its negative log-likelihood, padding slots left out
      loss_RxB = jnp.sum(jnp.where(batch["target"] > 0, loss_RxB, 0.0), -1)
    entropy_B = -jnp.sum(jnp.where(p_RxB > 0, p_RxB * jnp.log(jnp.maximum(p_RxB, 1e-30)), 0.0), axis=0)
    loss = jnp.mean(jnp.sum(p_RxB * loss_RxB, axis=0) - self.cfg.options.exit_beta * entropy_B)
    return loss, jnp.mean(answer_correct(jnp.argmax(logits_RxBxV[-1], -1), batch["target"]))

