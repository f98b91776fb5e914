"""The generation task: a chain whose answer is generated, one entity per step.

Given a head entity and k relations, the model writes the k entities of the path (`written="path"`): the sequence
is `h r_1 .. r_k e_1 .. e_k` with e_i = r_i(e_{i-1}) (e_0 = h); the prompt is its first k + 1 tokens and position
k + i - 1 predicts e_i (teacher forcing in training, the model's own tokens when decoding). The implicit variant
(`written="final"`) writes only e_k after the prompt, `h r_1 .. r_k e_k`: every hop is composed inside the depth
loop, as in the depth task, and the prompt's cached keys and values are what the policies share. The graph, the
chains (training chains and the held-out ones, split by chain) and the curriculum are the depth task's
(`data.ChainTask`), so a chain held out of the depth task is held out here too.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from looprec import data
from looprec.config import ChainDataConfig


WRITTEN = ("path", "final")


def seq_len(hop: int, written: str = "path") -> int:
  """Tokens of a hop-k example: head, k relations, and the k entities of the path or the final one."""
  return hop + 1 + n_written(hop, written)


def n_written(hop: int, written: str = "path") -> int:
  """Tokens the model writes after a hop-k prompt."""
  return hop if written == "path" else 1


@dataclasses.dataclass
class GenerationTask:
  """`data.ChainTask`'s chains, written out as paths. Batches are dicts of numpy arrays."""

  cfg: ChainDataConfig
  written: str = "path"  # path: every entity of the path; final: only the last one

  def __post_init__(self):
    if self.written not in WRITTEN:
      raise ValueError(f"written={self.written!r}: one of {', '.join(WRITTEN)}")
    self.chain = data.ChainTask(self.cfg)
    self.vocab, self.curriculum = self.chain.vocab, self.chain.curriculum

  def _paths(self, heads_B, rels_BxK):
    """Entity ids of every step of each chain (B x K; -1 past a row's hop, where rels are -1)."""
    e_B, out = np.asarray(heads_B, np.int64), []
    for r_B in np.asarray(rels_BxK).T:
      e_B = np.where(r_B >= 0, self.chain.perms_MxN[np.maximum(r_B, 0), e_B], e_B)
      out.append(np.where(r_B >= 0, self.vocab.entity_ids(e_B), -1))
    return np.stack(out, 1).astype(np.int32)

  def _sequences(self, ex: dict) -> dict:
    """The depth task's examples (`data.encode` layout, answer_at=last_input) as generation sequences."""
    hops_B, rels_BxK = ex["hop"], ex["tokens"][:, 1:1 + ex["hop"].max()]
    rel_ids_BxK = np.where(rels_BxK > 0, rels_BxK - self.vocab.relation_offset, -1)
    path_BxK = self._paths(ex["tokens"][:, 0] - self.vocab.entity_offset, rel_ids_BxK)
    b, k = path_BxK.shape
    rows_B = np.arange(b)
    if self.written == "final":
      path_BxK = path_BxK[rows_B, hops_B - 1][:, None]
    tokens_BxT = np.zeros((b, seq_len(k, self.written)), np.int32)
    tokens_BxT[:, :1 + k] = ex["tokens"][:, :1 + k]
    targets_BxT = np.full((b, seq_len(k, self.written)), -1, np.int32)  # -1: no loss at this position
    for i in range(path_BxK.shape[1]):
      live_B = i < hops_B
      tokens_BxT[rows_B, hops_B + 1 + i] = np.where(live_B, path_BxK[:, i], tokens_BxT[rows_B, hops_B + 1 + i])
      targets_BxT[rows_B, hops_B + i] = np.where(live_B, path_BxK[:, i], -1)
    return {"tokens": tokens_BxT, "targets": targets_BxT, "hop": hops_B, "path": path_BxK}

  def train_examples(self, stage: int, ids_B) -> dict:
    """Training sequences (hops 1..stage, held-out chains never appear), right-padded to the stage's deepest."""
    return self._sequences(self.chain.train_examples(stage, ids_B, stage))

  def eval_split(self, hop: int) -> dict:
    """The held-out chains of one hop: `prompt` (B x (hop + 1)) and `path` (B x n_written(hop), the entities to
    write)."""
    return self._prompts(self.chain.eval_split(hop), hop)

  def val_split(self, hop: int) -> dict:
    """The validation chains of one hop (`data.ChainTask.val_split`), as eval_split lays them out."""
    return self._prompts(self.chain.val_split(hop), hop)

  def _prompts(self, chain_ex: dict, hop: int) -> dict:
    ex = self._sequences(chain_ex)
    return {"prompt": ex["tokens"][:, :hop + 1], "path": ex["path"][:, :n_written(hop, self.written)],
            "hop": ex["hop"]}


def sequence_loss(model, params, batch, n_loops: int):
  """(mean cross-entropy over the positions with a target, token accuracy there) after n_loops loops."""
  logits_BxTxV = model.apply(params, batch["tokens"], n_loops)
  live_BxT = batch["targets"] >= 0
  targets_BxT = jnp.maximum(batch["targets"], 0)
  ce_BxT = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT)
  n = jnp.maximum(live_BxT.sum(), 1)
  acc = jnp.sum((jnp.argmax(logits_BxTxV, -1) == targets_BxT) & live_BxT) / n
  return jnp.sum(ce_BxT * live_BxT) / n, acc


def path_accuracy(generated_BxK, path_BxK) -> dict:
  """`path`: share of rows whose every generated entity is right; `final`: share whose last one is."""
  generated_BxK, path_BxK = np.asarray(generated_BxK), np.asarray(path_BxK)
  return {"path": float(np.mean(np.all(generated_BxK == path_BxK, axis=1))),
          "final": float(np.mean(generated_BxK[:, -1] == path_BxK[:, -1]))}


def train(model, params, task: GenerationTask, n_loops: int, steps: int, batch_size: int, lr: float = 1e-3,
          stage: int | None = None):
  """Adam on `sequence_loss` for `steps` steps at one curriculum stage (default the last). Returns (params,
  final loss). A plain loop, not `train.Trainer`: the Trainer's loss reads one answer position per example."""
  stage = task.curriculum.last if stage is None else stage
  tx = optax.adam(lr)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, tokens, targets):
    (loss, _), grads = jax.value_and_grad(sequence_loss, argnums=1, has_aux=True)(
        model, params, {"tokens": tokens, "targets": targets}, n_loops)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  loss = jnp.nan
  for s in range(steps):
    batch = task.train_examples(stage, np.arange(s * batch_size, (s + 1) * batch_size))
    params, opt, loss = step(params, opt, batch["tokens"], batch["targets"])
  return params, float(loss)
