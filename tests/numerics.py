"""`numerics_fingerprint`: which float32 kernels this machine's XLA compiles (run as a script: print it)."""
import functools
import hashlib

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

from looprec import data, sharding, train
from looprec.config import ChainDataConfig, ModelConfig, TrainConfig
from looprec.models.looped import LoopedTransformer


@functools.cache
def numerics_fingerprint() -> str:
  """A hash of the parameters after five train steps of a smoke-size looped model on fixed batches: equal on
  machines whose compiled float32 kernels round alike (it tells XLA's AVX-512, AVX2 and SSE4.2 code apart)."""
  task = data.make_task(ChainDataConfig(n_entities=20, n_relations=4, seq_len=12))
  model = LoopedTransformer(ModelConfig(d_model=32, n_heads=2, n_layers=1), task.vocab.size)
  tx, mesh = train.make_optimizer(TrainConfig(warmup_steps=2)), sharding.make_mesh()
  state, programs = train.init_state(model, tx, jax.random.PRNGKey(0), 12, mesh), train.Programs(model, tx, mesh, 0.0)
  for i in range(5):
    state = programs.step(state, sharding.put_batch(task.train_examples(4, np.arange(64) + 64 * i, 4), mesh), 4)[0]
  return hashlib.sha256(np.asarray(ravel_pytree(state.params)[0]).tobytes()).hexdigest()[:12]


if __name__ == "__main__":
  print(numerics_fingerprint())
