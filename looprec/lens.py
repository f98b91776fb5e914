"""Logit lens: what the hidden state of a 2-hop query decodes to after every layer of every loop.

The state is projected through the final norm and the tied head (`model.head`), and the rank of a named
entity among all vocabulary logits is recorded: its top-1 rate and mean reciprocal rank per loop and per layer.
Three readings (TARGETS): the bridge (the entity after the first hop) and the answer at the answer position
(the last input token, r2), and the bridge at the first relation's token (r1), where a causal model answers
the first hop (h, r1) -> bridge exactly as it answers that atomic fact. A model that composes hop by hop has the
bridge somewhere before it has the answer.
"""
from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from looprec import eval as evaluation
from looprec import sharding

# lens name -> (examples key of the entity, position read: the answer position or the first relation's, 1)
TARGETS = {"bridge": ("bridge", "answer"), "answer": ("target", "answer"), "bridge_at_r1": ("bridge", "r1")}


def ranks(logits_xBxV, target_B):
  """1-based rank of each example's target among its logits (ties count in the target's favour): x B."""
  target_xBx1 = jnp.take_along_axis(logits_xBxV, jnp.broadcast_to(target_B[:, None], logits_xBxV.shape[:-1] + (1,)),
                                    axis=-1)
  return 1 + jnp.sum(logits_xBxV > target_xBx1, axis=-1)


@functools.lru_cache(maxsize=None)
def _ranks_fn(model, mesh, n_loops: int):
  def fn(params, tokens_BxT, read_pos_B, target_B, bridge_B):
    entities = {"target": target_B, "bridge": bridge_B}
    positions = {"answer": read_pos_B, "r1": jnp.ones_like(read_pos_B)}

    def readout(_, layers_LxBxTxD):
      logits = {p: model.layer_logits(params, layers_LxBxTxD, pos_B) for p, pos_B in positions.items()}
      return jnp.stack([ranks(logits[pos], entities[key]) for key, pos in TARGETS.values()])

    return model.forward(params, tokens_BxT, n_loops, readout=readout, per_layer=True)[1]  # R x G x L x B

  return sharding.jit_over_batch(fn, mesh, 4)


def summarize(rank_RxLxN) -> dict:
  """Top-1 rate and MRR after each loop (its last layer) and after each layer, and where top-1 peaks first:
  `peak_layer` counts the layers of all loops (1-based), `peak_loop` is the loop it belongs to."""
  top1_RxL, mrr_RxL = (rank_RxLxN == 1).mean(-1), (1.0 / rank_RxLxN).mean(-1)
  n_layers = rank_RxLxN.shape[1]
  peak = int(np.argmax(top1_RxL.ravel()))
  return {"top1": top1_RxL[:, -1].tolist(), "mrr": mrr_RxL[:, -1].tolist(),
          "top1_by_layer": top1_RxL.tolist(), "mrr_by_layer": mrr_RxL.tolist(),
          "peak_top1": float(top1_RxL.max()), "peak_layer": peak + 1, "peak_loop": peak // n_layers + 1,
          "n_layers": n_layers}


def logit_lens(model, params, splits: dict, n_loops: int, mesh=None, batch_size: int = 256) -> dict:
  """split -> {name: summary for name in TARGETS} (see `summarize`) over loops 1..n_loops, for the splits whose
  examples have a `bridge` (2-hop probes encoded head, r1, r2, ...).

      lens = logit_lens(model, params, {"test_inferred_iid": task.probes["test_inferred_iid"]}, n_loops=4)
      lens["test_inferred_iid"]["bridge"]["top1"]  # per loop
  """
  mesh = mesh or sharding.make_mesh()
  fn = functools.partial(_ranks_fn(model, mesh, n_loops), params)
  out = {}
  for name, examples in splits.items():
    if "bridge" not in examples:
      continue
    keys = ("tokens", "read_pos", "target", "bridge")
    parts = [r[..., :size] for r, size in evaluation.batches(fn, examples, mesh, batch_size, keys)]
    rank_RxGxLxN = np.concatenate(parts, axis=-1)  # G: the TARGETS
    out[name] = {lens: summarize(rank_RxGxLxN[:, i]) for i, lens in enumerate(TARGETS)}
  return out
