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
model = LoopedTransformer(ModelConfig(d_model=32, n_heads=4, n_layers=2, embed_dropout=0.1, attn_dropout=0.1, resid_dropout=0.1), task.vocab.size)
tx = train.make_optimizer(TrainConfig(warmup_steps=2))

def train3(mesh, ahead):
  state = train.init_state(model, tx, jax.random.PRNGKey(0), 8, mesh)
  steps, losses = (train.AheadPrograms if ahead else train.Programs)(model, tx, mesh, 0.1), []
  for i in range(3):
    batch = sharding.put_batch(task.train_examples(3, np.arange(16) + 16 * i), mesh)
    if i == 0:
      steps.prepare(state, lambda: (batch, [2, 3, 4]))
    state, m = steps.step(state, batch, 2 + i)
    losses.append(float(m["loss"]))
  steps.close()
  return state, losses

state, losses = train3(sharding.make_mesh(), False)
ahead_losses = train3(sharding.make_mesh(2 if jax.device_count() > 1 else 1), True)[1]  # with an fsdp axis on 8
leaves = [np.asarray(x).ravel() for x in jax.tree_util.tree_leaves(state.params)]
print(json.dumps({"devices": jax.device_count(), "losses": losses, "ahead_losses": ahead_losses,
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
  assert one["ahead_losses"] == one["losses"]  # steps compiled ahead: the same programs
  np.testing.assert_allclose(eight["ahead_losses"], one["losses"], rtol=1e-5)  # ... on a data x fsdp mesh too
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
  for start, stop in ((0, 4000), (100, 4000), (0, 10)):  # what loop_programs=ahead compiles, in order of need
    want = list(dict.fromkeys(draws[start:stop]))
    assert train.first_draws(rec, 0, start, stop) == want
  assert len(train.first_draws(rec, 0, 0, 10)) < 7 and train.first_draws(Recurrence.parse("fixed:6"), 0, 3, 9) == [6]


def test_weight_decay_skips_vectors():
  import jax
  import jax.numpy as jnp
  tx = train.make_optimizer(TrainConfig(lr=0.1, warmup_steps=0, weight_decay=0.5, grad_clip=0.0))
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones((2,))}
  grads = jax.tree_util.tree_map(jnp.zeros_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert float(jnp.abs(updates["b"]).max()) == 0.0 and float(jnp.abs(updates["w"]).max()) > 0


def test_weight_decay_on_all_decays_every_parameter_like_torch_adamw():
  """weight_decay_on=all: one step on zero gradients shrinks vectors and matrices alike by lr x wd."""
  import jax
  import jax.numpy as jnp
  cfg = TrainConfig(lr=0.1, warmup_steps=0, weight_decay=0.5, grad_clip=0.0, weight_decay_on="all")
  tx = train.make_optimizer(cfg)
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones((2,))}
  grads = jax.tree_util.tree_map(jnp.zeros_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  for leaf in jax.tree_util.tree_leaves(updates):
    np.testing.assert_allclose(np.asarray(leaf), -0.1 * 0.5, rtol=1e-6)


def test_old_run_configs_with_one_dropout_still_load():
  from looprec import config as C
  from looprec.config import ModelConfig
  m = C.from_dict(ModelConfig, {"d_model": 32, "dropout": 0.1})
  assert (m.embed_dropout, m.attn_dropout, m.resid_dropout) == (0.1, 0.1, 0.1) and m.d_model == 32
  with np.testing.assert_raises(C.ConfigError):
    C.override(ModelConfig(), ["dropout=0.1"])
  with np.testing.assert_raises(C.ConfigError):
    C.override(TrainConfig(), ["weight_decay_on=bias"]).validate()


def test_curriculum_checked_once_per_epoch_and_forced_to_min_epochs(tmp_path):
  """check=epoch: the gate is read every ceil(rows / batch) steps of the stage (28 rows, batch 8: 4 steps);
  min_epochs holds the first stage until that many epochs have passed; a threshold below 0 always passes."""
  from looprec import data, sharding
  from looprec.config import ChainDataConfig, CurriculumConfig, ModelConfig
  from looprec.models.looped import LoopedTransformer
  stages_of = {}
  for min_epochs in (0, 3):
    cur = CurriculumConfig(first_hop=2, last_hop=3, threshold=-1.0, check="epoch", min_epochs=min_epochs)
    cfg = ChainDataConfig(n_entities=8, n_relations=2, seq_len=6, train_chains_per_hop=12, curriculum=cur)
    task = data.make_task(cfg)
    assert task.curriculum.rows == (8 * 2 + 12, 8 * 2 + 24)
    assert task.curriculum.check_every(2, 8, 100) == 4 and task.curriculum.check_every(3, 8, 100) == 5
    model = LoopedTransformer(ModelConfig(d_model=16, n_heads=2), task.vocab.size)
    result = train.train_model("m", model, Recurrence.parse("fixed:2"), 16,
                               TrainConfig(batch_size=8, eval_every=100, checkpoint_every=100, log_every=100),
                               task, sharding.make_mesh(), str(tmp_path / str(min_epochs)), 0, {})
    stages_of[min_epochs] = result.stages
  assert stages_of == {0: [[0, 2], [4, 3]], 3: [[0, 2], [12, 3]]}
  assert data.Curriculum(2, 4, check="epoch", rows=(10, 20, 30)).epochs([[0, 2], [4, 3], [10, 4]], 17, 5) == 2 + 1 + 1


def test_epoch_check_needs_a_finite_training_set():
  from looprec.config import ChainDataConfig, ConfigError, CurriculumConfig
  with np.testing.assert_raises(ConfigError):
    ChainDataConfig(curriculum=CurriculumConfig(check="epoch")).validate()
  with np.testing.assert_raises(ConfigError):
    ChainDataConfig(train_chains_per_hop=5, curriculum=CurriculumConfig(min_epochs=3)).validate()


def test_training_with_steps_compiled_ahead_equals_lazy_compilation(tmp_path, monkeypatch):
  """train.loop_programs=ahead trains bit for bit as per_r, on the precompiled programs; a run that stops at once
  (a spent time budget) shuts the compile threads down on its way out."""
  import jax
  from looprec import data, sharding
  from looprec.config import ChainDataConfig, CurriculumConfig, ModelConfig
  from looprec.models.looped import LoopedTransformer
  made, make_programs = [], train.make_programs
  monkeypatch.setattr(train, "make_programs", lambda *a, **k: made.append(make_programs(*a, **k)) or made[-1])
  task = data.make_task(ChainDataConfig(n_entities=8, n_relations=2, seq_len=6,
                                        curriculum=CurriculumConfig(first_hop=2, last_hop=3, threshold=-1.0)))
  model = LoopedTransformer(ModelConfig(d_model=16, n_heads=2), task.vocab.size)
  rec = Recurrence.parse("dynamic:2,1,3")
  assert set(train.first_draws(rec, 0, 0, 8)) == {1, 2, 3}
  params = {}
  for mode, minutes in (("per_r", 0.0), ("ahead", 0.0), ("ahead", 1e-9)):
    cfg = TrainConfig(batch_size=8, eval_every=5, checkpoint_every=100, log_every=100, loop_programs=mode,
                      max_minutes=minutes)
    result = train.train_model("m", model, rec, 8, cfg, task, sharding.make_mesh(), str(tmp_path / f"{mode}{minutes}"),
                               0, {})
    params[mode, minutes] = (result.steps, result.stages, result.params)
  assert params["per_r", 0.0][:2] == params["ahead", 0.0][:2] == (8, [[0, 2], [5, 3]])
  jax.tree_util.tree_map(np.testing.assert_array_equal, params["per_r", 0.0][2], params["ahead", 0.0][2])
  per_r, ahead, stopped = made  # pylint: disable=protected-access
  assert not any(isinstance(f, jax.stages.Compiled) for f in per_r._cache.values())
  assert {k[0] for k, f in ahead._cache.items() if isinstance(f, jax.stages.Compiled)} == {1, 2, 3}
  assert params["ahead", 1e-9][0] == 0 and stopped._pool._shutdown
