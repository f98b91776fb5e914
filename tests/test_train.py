"""Training: optimizer schedule, recurrence draws, sharded step equivalence across 1 and 8 devices."""
import json
import os
import subprocess
import sys

import numpy as np

from looprec import train
from looprec.config import Recurrence, TrainConfig

MULTI_DEVICE_SCRIPT = r"""
import json, sys
import jax, numpy as np
from looprec import data, sharding, train
from looprec.config import ChainDataConfig, ModelConfig, TrainConfig
from looprec.models.looped import LoopedTransformer
task = data.make_task(ChainDataConfig(n_entities=10, n_relations=3, seq_len=8))
model = LoopedTransformer(ModelConfig(d_model=32, n_heads=4, n_layers=2, dropout=0.1), task.vocab.size)
tx = train.make_optimizer(TrainConfig(warmup_steps=2))
mesh = sharding.make_mesh()
state = train.init_state(model, tx, jax.random.PRNGKey(0), 8, mesh)
steps = train.StepFunctions(model, tx, mesh, 0.1)
losses = []
for i in range(3):
  batch = sharding.put_batch(task.train_examples(3, np.arange(16) + 16 * i), mesh)
  state, m, _ = steps(2 + i)(state, batch, jax.random.PRNGKey(i), i, train.HEALTHY)
  losses.append(float(m["loss"]))
leaves = [np.asarray(x).ravel() for x in jax.tree_util.tree_leaves(state["params"])]
print(json.dumps({"devices": jax.device_count(), "losses": losses,
                  "params": float(np.concatenate(leaves).astype(np.float64).sum()),
                  "first": np.concatenate(leaves)[:50].tolist()}))
"""


def _run(devices: int) -> dict:
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", MULTI_DEVICE_SCRIPT], capture_output=True, text=True, env=env,
                       check=True, timeout=300)
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_step_on_8_devices_equals_one_device():
  one, eight = _run(1), _run(8)
  assert one["devices"] == 1 and eight["devices"] == 8
  np.testing.assert_allclose(one["losses"], eight["losses"], rtol=1e-5)
  np.testing.assert_allclose(one["first"], eight["first"], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(one["params"], eight["params"], rtol=1e-5)


def test_schedule_warms_up_then_decays():
  lr = train.schedule(TrainConfig(lr=1.0, warmup_steps=10, decay_steps=110))
  assert float(lr(0)) == 0.0 and abs(float(lr(10)) - 1.0) < 1e-6
  assert abs(float(lr(60)) - 0.5) < 1e-6 and float(lr(110)) == 0.0
  const = train.schedule(TrainConfig(lr=1.0, warmup_steps=10, decay_steps=0))
  assert float(const(10_000)) == 1.0


def test_dynamic_recurrence_draws_are_clipped_poisson_and_reproducible():
  rec = Recurrence.parse("dynamic:4,2,8")
  draws = [train.draw_loops(rec, 0, s) for s in range(4000)]
  assert min(draws) == 2 and max(draws) == 8
  assert abs(np.mean(draws) - rec.mean_loops) < 0.1
  assert draws == [train.draw_loops(rec, 0, s) for s in range(4000)]
  assert train.draw_loops(Recurrence.parse("fixed:6"), 0, 5) == 6


def test_weight_decay_skips_vectors():
  import jax
  import jax.numpy as jnp
  tx = train.make_optimizer(TrainConfig(lr=0.1, warmup_steps=0, weight_decay=0.5, grad_clip=0.0))
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones((2,))}
  grads = jax.tree_util.tree_map(jnp.zeros_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert float(jnp.abs(updates["b"]).max()) == 0.0 and float(jnp.abs(updates["w"]).max()) > 0
