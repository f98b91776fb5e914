"""The official loop's behaviour as options (issue 19): dropout until a stage's first check, evaluation in its own
dtype, kept stage-pass checkpoints and the stop after the last stage, per-stage lr, the two curriculum gates."""
import dataclasses
import json
import os

import jax
import numpy as np
import optax
import pytest

from looprec import checkpoint, data, eval as evaluation, models, sharding, train
from looprec.config import ChainDataConfig, CurriculumConfig, ModelConfig, Recurrence, TrainConfig

# threshold < 0: every gate check passes, so stage 2 passes at step 5 and stage 3 (the last) at step 10
TASK_CFG = ChainDataConfig(n_entities=8, n_relations=2, seq_len=6, n_eval=16,
                           curriculum=CurriculumConfig(first_hop=2, last_hop=3, threshold=-1.0))
MODEL_CFG = ModelConfig(d_model=16, n_heads=2, resid_dropout=0.1, attn_dropout=0.1, dtype="bfloat16",
                        eval_dtype="float32")
PROTOCOL = TrainConfig(steps=20, batch_size=8, warmup_steps=2, eval_every=5, checkpoint_every=100, log_every=100,
                       dropout_until_check=True, stage_checkpoints=True, stop_after_last_stage=True)


def _record(monkeypatch) -> dict:
  """From now on, the dropout flag of every training step and the model of every evaluation."""
  recorded, step, accuracy = {"dropout": [], "eval": []}, train.Programs.step, evaluation.accuracy
  monkeypatch.setattr(train.Programs, "step", lambda self, state, batch, n_loops, dropout=True: (
      recorded["dropout"].append(dropout), step(self, state, batch, n_loops, dropout))[1])
  monkeypatch.setattr(evaluation, "accuracy", lambda m, *a, **k: (recorded["eval"].append(m), accuracy(m, *a, **k))[1])
  return recorded


def _train(run_dir, cfg=PROTOCOL, rec="fixed:2"):
  """train_model on the tiny chain task, evaluated by the float32 model."""
  task = data.make_task(TASK_CFG)
  model = models.build(MODEL_CFG, task.vocab.size)
  return train.train_model("m", model, Recurrence.parse(rec), cfg.steps, cfg, task, sharding.make_mesh(),
                           str(run_dir), 0, {}, eval_model=models.build(MODEL_CFG.for_eval(), task.vocab.size))


def test_dropout_until_each_stages_first_check_then_stop_after_the_last_stage(tmp_path, monkeypatch):
  recorded = _record(monkeypatch)
  result = _train(tmp_path)
  assert result.stages == [[0, 2], [5, 3]] and result.steps == 10  # stopped at the last stage's pass, not at 20
  assert recorded["dropout"] == [True] * 5 + [True] * 5  # each stage's first check is where it passes
  longer = dataclasses.replace(PROTOCOL, eval_every=3, stop_after_last_stage=False, stage_checkpoints=False,
                               steps=9)
  recorded["dropout"].clear()
  _train(tmp_path / "longer", longer)
  # stage 2 passes at its first check (step 3); stage 3 (the last) trains on after passing at step 6
  assert recorded["dropout"] == [True, True, True, True, True, True, False, False, False]


def test_a_step_without_dropout_is_the_same_whatever_the_rng():
  """What the flag switches: with dropout the step's loss depends on the run's rng, without it it does not."""
  task = data.make_task(TASK_CFG)
  model, tx, mesh = models.build(MODEL_CFG, task.vocab.size), train.make_optimizer(PROTOCOL), sharding.make_mesh()
  batch = sharding.put_batch(task.train_examples(3, np.arange(8)), mesh)
  losses = {}
  for dropout in (True, False):
    for seed in (0, 1):
      state = train.init_state(model, tx, jax.random.PRNGKey(0), 6, mesh).replace(rng=jax.random.PRNGKey(seed))
      losses[dropout, seed] = float(train.Programs(model, tx, mesh, 0.0).step(state, batch, 2, dropout)[1]["loss"])
  assert losses[False, 0] == losses[False, 1] and losses[True, 0] != losses[True, 1]


def test_evaluation_runs_in_float32_while_training_runs_in_bfloat16(tmp_path, monkeypatch):
  recorded = _record(monkeypatch)
  _train(tmp_path)
  assert recorded["eval"] and {m.cfg.dtype for m in recorded["eval"]} == {"float32"}
  task = data.make_task(TASK_CFG)
  ex = task.eval_split(2)
  params = models.build(MODEL_CFG, task.vocab.size).init(jax.random.PRNGKey(0), 6)
  logits = lambda cfg: np.asarray(models.build(cfg, task.vocab.size).loop_logits(params, ex["tokens"], ex["read_pos"],
                                                                                   2))
  evaluated = np.asarray(recorded["eval"][0].loop_logits(params, ex["tokens"], ex["read_pos"], 2))
  explicit = logits(dataclasses.replace(MODEL_CFG, dtype="float32", eval_dtype=""))
  np.testing.assert_array_equal(evaluated, explicit)  # the evaluation is an explicit float32 forward ...
  assert np.abs(logits(MODEL_CFG) - explicit).max() > 1e-5  # ... and not the bf16 one the steps train
  from experiments import depth_extrap, systematicity
  for module in (depth_extrap, systematicity):
    cfg = module.paper()
    assert cfg.model.dtype == "bfloat16" and cfg.build_model("looped", 300, evaluating=True).cfg.dtype == "float32"
    assert cfg.build_model("looped", 300).cfg.dtype == "bfloat16"


def test_stage_pass_checkpoints_are_kept_and_loadable(tmp_path):
  from experiments import depth_extrap
  from looprec import config as C, experiment
  cfg = C.override(depth_extrap.smoke(), ["train.stage_checkpoints=true", "train.stop_after_last_stage=true",
                                          "data.curriculum.threshold=-1", "train.keep_checkpoints=1",
                                          "train.checkpoint_every=5", "train.eval_every=20", "eval.max_hop=3",
                                          "eval.max_loops=3", "models.vanilla.steps=30"])
  run_dir = str(tmp_path / "run")
  task = data.make_task(cfg.data)
  for name, _, result in experiment.train_models(cfg, task, sharding.make_mesh(), run_dir):
    assert result.steps == 40 if name == "looped" else result.steps == 30  # vanilla: its budget ends first
  os.makedirs(run_dir, exist_ok=True)
  with open(os.path.join(run_dir, "config.json"), "w") as f:
    json.dump({"experiment": "depth_extrap", "preset": "smoke", "config": C.to_dict(cfg)}, f)
  run = experiment.load_run(run_dir)
  assert run.stage_hops("looped") == [2, 3] and run.stage_hops("vanilla") == [2]
  params, meta = run.stage("looped", 2)
  assert meta["step"] == 20 and meta["stage"] == 2
  assert np.isclose(meta["accuracy"], evaluation.accuracy(run.model("looped"), params, task.eval_split(2), 3,
                                                          sharding.make_mesh()))
  assert [d for d in os.listdir(os.path.join(run_dir, "checkpoints", "looped")) if d.isdigit()] == ["40"]
  with pytest.raises(C.ConfigError, match="no checkpoint at stage 5"):
    run.stage("looped", 5)


def test_resume_across_a_stage_pass_equals_the_uninterrupted_run(tmp_path):
  straight = _train(tmp_path / "straight")
  _train(tmp_path / "split", dataclasses.replace(PROTOCOL, steps=7))
  resumed = _train(tmp_path / "split")
  assert resumed.steps == straight.steps == 10 and resumed.stages == straight.stages
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(straight.params),
                                                  jax.tree_util.tree_leaves(resumed.params)))
  again = _train(tmp_path / "split")  # a finished curriculum: nothing left to train
  assert again.steps == 10
  for hop in (2, 3):
    a = checkpoint.restore_params(checkpoint.stage_directory(str(tmp_path / "straight"), "m"), step=hop)[0]
    b = checkpoint.restore_params(checkpoint.stage_directory(str(tmp_path / "split"), "m"), step=hop)[0]
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_per_stage_lr_is_the_official_formula_and_scales_the_update():
  cfg = TrainConfig(lr=1e-4, stage_lr_gamma=0.9, stage_lr_min=2e-5, warmup_steps=3)
  official = lambda k: max(1e-4 * 0.9 ** (k - 2), 2e-5)  # train_extrapolation.py --use_lr_decay
  assert all(np.isclose(train.stage_lr_factor(cfg, k, 2) * 1e-4, official(k)) for k in range(2, 41))
  assert train.stage_lr_factor(TrainConfig(), 7, 2) == 1.0
  params = {"w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), "b": np.ones(4, np.float32)}
  grads = jax.tree_util.tree_map(lambda p: p * 0.3 + 0.1, params)
  scaled = train.make_optimizer(cfg)
  state = optax.tree_utils.tree_set(scaled.init(params), step_size=np.float32(0.9 ** 5))
  plain = train.make_optimizer(dataclasses.replace(cfg, lr=1e-4 * 0.9 ** 5, stage_lr_gamma=1.0))
  plain_state = plain.init(params)
  for _ in range(4):
    up, state = scaled.update(grads, state, params)
    want, plain_state = plain.update(grads, plain_state, params)
    np.testing.assert_allclose(up["w"], want["w"], rtol=1e-5)


def test_stage_lr_is_set_at_each_stage_and_survives_a_resume(tmp_path):
  cfg = dataclasses.replace(PROTOCOL, stage_lr_gamma=0.5, stop_after_last_stage=False, steps=12)
  task = data.make_task(TASK_CFG)
  trainer = lambda where, steps: train.Trainer(
      "m", models.build(MODEL_CFG, task.vocab.size), Recurrence.parse("fixed:2"), steps,
      dataclasses.replace(cfg, steps=steps), task, sharding.make_mesh(), str(tmp_path / where), 0, {})
  straight = trainer("straight", 12)
  straight.run()
  assert straight.stage == 3 and float(optax.tree_utils.tree_get(straight.state.opt_state, "step_size")) == 0.5
  trainer("split", 7).run()  # stopped inside stage 3, resumed from the checkpoint at step 7
  resumed = trainer("split", 12)
  resumed.run()
  assert float(optax.tree_utils.tree_get(resumed.state.opt_state, "step_size")) == 0.5
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(straight.state.params),
                                                  jax.tree_util.tree_leaves(resumed.state.params)))


def test_the_adaptive_gate_is_the_official_kl_entropy_forward(tmp_path):
  """train.gate=kl_entropy (official commit 8a2eed0, forward_adapative_ent) against the rule written out on the
  per-loop logits: each example stops at the first loop t >= 2 with KL(p_t || p_t-1) < 0.5 and entropy < 3 + 12 /
  T, else at the cap, and is scored there."""
  task = data.make_task(TASK_CFG)
  cfg = dataclasses.replace(PROTOCOL, gate="kl_entropy")
  eval_model = models.build(MODEL_CFG.for_eval(), task.vocab.size)
  trainer = train.Trainer("m", models.build(MODEL_CFG, task.vocab.size), Recurrence.parse("dynamic:2,1,4"), 1,
                          cfg, task, sharding.make_mesh(), str(tmp_path), 0, {}, eval_model=eval_model)
  trainer.mesh = sharding.make_mesh()
  params = eval_model.init(jax.random.PRNGKey(3), 6)
  trainer.state = train.TrainState(params, None, 0, None, None)
  ex = task.eval_split(3)
  logp = jax.nn.log_softmax(np.asarray(eval_model.loop_logits(params, ex["tokens"], ex["read_pos"], 4), np.float64))
  p = np.exp(logp)
  kl = np.sum(p[1:] * (logp[1:] - logp[:-1]), -1)
  entropy = -np.sum(p * logp, -1)[1:]
  stop = (kl < 0.5) & (entropy < 3.0 + 12.0 / ex["tokens"].shape[1])
  at = np.where(stop.any(0), stop.argmax(0) + 1, 3)
  want = np.mean(np.argmax(logp[at, np.arange(len(at))], -1) == ex["target"])
  assert trainer._accuracy(ex) == pytest.approx(want)
  fixed = evaluation.accuracy(eval_model, params, ex, 4, trainer.mesh)
  trainer.cfg = PROTOCOL
  assert trainer._accuracy(ex) == fixed
