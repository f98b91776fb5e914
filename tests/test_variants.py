"""The model kinds beyond the paper's: each reduces to a known model in an identity case, has the shapes eval,
halting and lens read, finite gradients, and one-line errors for bad sizes."""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from looprec import halting, sharding, train
from looprec.config import ConfigError, ModelConfig
from looprec.models import build, exit_gate, training_free
from looprec.models.looped import Block, attention_mask

VOCAB = 17
BASE = ModelConfig(d_model=32, n_heads=4, n_layers=1, attn_window=3, injection="add")
READ = jnp.array([3, 1, 5])


def tokens():
  return jnp.array([[1, 5, 9, 3, 0, 0], [2, 4, 0, 0, 0, 0], [7, 8, 9, 10, 11, 12]], jnp.int32)


def batch():
  return {"tokens": tokens(), "read_pos": READ, "target": jnp.array([4, 6, 2], jnp.int32)}


def make(**kw):
  model = build(dataclasses.replace(BASE, **kw), VOCAB)
  return model, model.init(jax.random.PRNGKey(0))


def layer_stack(params_list, cfg, h, toks):
  """Layers applied one after another by hand (each a 1-layer Block)."""
  one = dataclasses.replace(cfg, n_layers=1)
  for p in params_list:
    h, _ = Block(one).apply({"params": {"layer_0": p}}, h, attention_mask(toks, cfg.attn_window), None)
  return h


# ---------------------------------------------------------------- prelude_core_coda


def test_prelude_core_coda_without_blocks_is_the_looped_model():
  looped, params = make(kind="looped", n_layers=2)
  pcc, pcc_params = make(kind="prelude_core_coda", n_layers=2)
  chex.assert_trees_all_equal(params, pcc_params)
  for r in (1, 3):
    chex.assert_trees_all_equal(pcc.apply(params, tokens(), r), looped.apply(params, tokens(), r))
  chex.assert_trees_all_equal(pcc.loop_logits(params, tokens(), READ, 4), looped.loop_logits(params, tokens(), READ, 4))


def test_prelude_core_coda_one_loop_is_a_plain_stack():
  cfg = dataclasses.replace(BASE, kind="prelude_core_coda", n_prelude=2, n_layers=1, n_coda=1, pos_emb="none")
  model = build(cfg, VOCAB)
  params = model.init(jax.random.PRNGKey(1))
  layers = ([params["prelude"][f"layer_{i}"] for i in range(2)] + [params["block"]["layer_0"]]
            + [params["coda"]["layer_0"]])
  h = layer_stack(layers, cfg, params["embed"][tokens()], tokens())
  chex.assert_trees_all_close(model.apply(params, tokens(), 1), model.head(params, h), atol=1e-5)
  # R = 3: the core repeats with the prelude's output injected before loops 2 and 3
  e = layer_stack(layers[:2], cfg, params["embed"][tokens()], tokens())
  h = layer_stack(layers[2:3], cfg, e, tokens())
  for _ in range(2):
    h = layer_stack(layers[2:3], cfg, h + e, tokens())
  h = layer_stack(layers[3:], cfg, h, tokens())
  chex.assert_trees_all_close(model.apply(params, tokens(), 3), model.head(params, h), atol=1e-5)


def test_readouts_after_every_loop_go_through_the_coda():
  model, params = make(kind="prelude_core_coda", n_prelude=1, n_coda=2)
  tr = model.trace(params, tokens(), READ, 4, per_layer=True)
  chex.assert_shape(tr["hidden"], (4, 3, 6, 32))
  chex.assert_shape(tr["layers"], (4, 1, 3, 6, 32))
  for r in (1, 4):
    chex.assert_trees_all_close(tr["logits"][r - 1], model.answer_logits(params, tokens(), READ, r), atol=1e-5)


# ---------------------------------------------------------------- hyperloop


@pytest.mark.parametrize("n_streams", [1, 3])
def test_hyperloop_at_init_is_prelude_core_coda(n_streams):
  """Gates at init (read one stream, write the update to all, keep every stream): all streams carry the same
  state, so any n reduces to prelude_core_coda with the shared params."""
  hyper, params = make(kind="hyperloop", n_prelude=1, n_coda=1, n_streams=n_streams, gate_sets=2)
  pcc = build(dataclasses.replace(hyper.cfg, kind="prelude_core_coda", n_streams=1), VOCAB)
  for r in (1, 2, 5):  # 5 > gate_sets: the last gate set is reused
    chex.assert_trees_all_close(hyper.apply(params, tokens(), r), pcc.apply(params, tokens(), r), atol=2e-5)


def test_hyperloop_gates_change_the_output_and_the_streams_differ():
  hyper, params = make(kind="hyperloop", n_streams=2, gate_sets=3)
  pcc = build(dataclasses.replace(hyper.cfg, kind="prelude_core_coda", n_streams=1), VOCAB)
  moved = {**params, "hyper": {**params["hyper"], "res": params["hyper"]["res"] * 0.5,
                               "w_post": jax.random.normal(jax.random.PRNGKey(2), params["hyper"]["w_post"].shape)}}
  assert not np.allclose(hyper.apply(moved, tokens(), 3), pcc.apply(params, tokens(), 3), atol=1e-3)
  state, _ = hyper.forward(moved, tokens(), 3)
  chex.assert_shape(state["h"], (3, 6, 2, 32))
  assert not np.allclose(state["h"][:, :, 0], state["h"][:, :, 1])


# ---------------------------------------------------------------- exit_gate


def test_exit_distribution_sums_to_one_and_matches_the_definition():
  lam = jnp.array([[0.2, 1.0], [0.5, 0.3], [0.9, 0.0]])
  p = exit_gate.exit_distribution(lam)
  np.testing.assert_allclose(p.sum(0), 1.0, rtol=1e-6)
  np.testing.assert_allclose(p[:, 0], [0.2, 0.8 * 0.5, 0.8 * 0.5], rtol=1e-6)
  np.testing.assert_allclose(p[:, 1], [1.0, 0.0, 0.0], atol=1e-7)


def test_exit_gate_loss_is_the_expected_loss_minus_beta_entropy_and_has_finite_gradients():
  model, params = make(kind="exit_gate", exit_beta=0.3, n_coda=1)
  loss, acc = model.loss(params, batch(), 3)
  logits = model.loop_logits(params, tokens(), READ, 3)
  tr = model.trace(params, tokens(), READ, 3)
  lam = jnp.stack([model.exit_prob(params, tr["hidden"][t][jnp.arange(3), READ]) for t in range(3)])
  p = np.asarray(exit_gate.exit_distribution(lam))
  ce = -np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), np.array([4, 6, 2])[None, :, None], -1)[..., 0]
  expect = np.mean((p * ce).sum(0) + 0.3 * (p * np.log(p)).sum(0))
  np.testing.assert_allclose(float(loss), expect, rtol=1e-5)
  assert 0 <= float(acc) <= 1
  grads = jax.grad(lambda prm: model.loss(prm, batch(), 3)[0])(params)
  assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))
  assert np.abs(grads["exit"]["kernel"]).sum() > 0 and np.abs(grads["block"]["layer_0"]["fc"]["kernel"]).sum() > 0


def test_train_step_uses_the_models_loss():
  model, params = make(kind="exit_gate")
  tx = train.make_optimizer(train.TrainConfig(warmup_steps=1))
  state = train.fresh_state({"params": params, "opt_state": tx.init(params)}, jax.random.PRNGKey(0),
                            sharding.make_mesh())
  state, metrics = train.train_step(state, batch(), model=model, tx=tx, n_loops=2, label_smoothing=0.0)
  np.testing.assert_array_equal(state.health, train.HEALTHY)
  np.testing.assert_allclose(metrics["loss"], model.loss(params, batch(), 2)[0], rtol=1e-5)
  assert np.isfinite(metrics["grad_norm"])


@pytest.mark.parametrize("kw", [dict(kind="prelude_core_coda", n_prelude=1, n_coda=1),
                                dict(kind="hyperloop", n_prelude=1, n_streams=2, gate_sets=2), dict(kind="exit_gate")])
def test_jitted_donating_train_step_of_every_kind(kw):
  """The step the trainer runs (jit, sharded, params donated: every leaf its own buffer), with finite metrics."""
  model, _ = make(**kw)
  mesh = sharding.make_mesh()
  tx = train.make_optimizer(train.TrainConfig(warmup_steps=1))
  state = train.init_state(model, tx, jax.random.PRNGKey(0), 6, mesh)
  state, metrics = train.Programs(model, tx, mesh, 0.0).step(state, sharding.put_batch(batch(), mesh), 2)
  np.testing.assert_array_equal(state.health, train.HEALTHY)
  assert all(np.isfinite(float(v)) for v in metrics.values())


def test_gate_policy_is_fixed_r_when_the_gate_never_fires_and_stops_when_it_does():
  model, params = make(kind="exit_gate")
  mesh = sharding.make_mesh()
  thresholds = halting.policy("gate", q=0.5).thresholds()
  never = {**params, "exit": {**params["exit"], "bias": jnp.array(-100.0)}}
  loops, answer, executed = halting.compiled(model, mesh)(never, tokens(), READ, thresholds, 5)
  assert loops.tolist() == [5, 5, 5] and int(executed) == 5
  np.testing.assert_array_equal(answer, jnp.argmax(model.answer_logits(params, tokens(), READ, 5), -1))
  always = {**params, "exit": {**params["exit"], "bias": jnp.array(100.0)}}
  loops, answer, executed = halting.compiled(model, mesh)(always, tokens(), READ, thresholds, 5)
  assert loops.tolist() == [1, 1, 1] and int(executed) == 1
  # the CDF passes 0.5 at the second loop when every lambda is 0.3 (1 - 0.7^2 = 0.51)
  lam = jnp.full((4, 3), 0.3)
  logits = model.loop_logits(params, tokens(), READ, 4)
  assert halting.decide(halting.policy("gate", q=0.5), logits, None, lam)[0].tolist() == [2, 2, 2]
  assert halting.decide(halting.policy("gate", q=1.0), logits, None, lam)[0].tolist() == [4, 4, 4]


def test_models_without_a_gate_never_exit_by_it():
  model, params = make(kind="looped")
  assert "gate" not in halting.applicable(model) and not model.has_exit_gate
  loops, _, _ = halting.compiled(model, sharding.make_mesh())(params, tokens(), READ,
                                                               halting.policy("gate", q=0.0).thresholds(), 4)
  assert loops.tolist() == [4, 4, 4]


# ---------------------------------------------------------------- training_free


def test_training_free_one_substep_one_loop_is_the_trained_model():
  vanilla, params = make(kind="looped", n_layers=3, pos_emb="none")
  for window in ("0:3", "1:2", "2:3"):
    tf = build(training_free.wrap(vanilla.cfg, f"window={window},substeps=1,damping=0.3"), VOCAB)
    chex.assert_trees_all_close(tf.apply(params, tokens(), 1), vanilla.apply(params, tokens(), 1), atol=1e-5)


def test_training_free_damped_substeps_follow_the_update_rule():
  vanilla, params = make(kind="looped", n_layers=3, pos_emb="none")
  cfg = training_free.wrap(vanilla.cfg, "window=1:2,substeps=4,damping=0.25")
  assert (cfg.window, cfg.substeps, cfg.damping) == ("1:2", 4, 0.25)
  tf = build(cfg, VOCAB)
  layers = [params["block"][f"layer_{i}"] for i in range(3)]
  g = lambda h: layer_stack(layers[1:2], cfg, h, tokens())
  h = layer_stack(layers[:1], cfg, params["embed"][tokens()], tokens())
  for _ in range(2):  # R = 2 loops of the damped window
    h_in, h_k = h, h
    for _ in range(4):
      h_k = h_k + (g(h_k) - h_k) / 4
    h = 0.25 * g(h_in) + 0.75 * h_k
  h = layer_stack(layers[2:], cfg, h, tokens())
  chex.assert_trees_all_close(tf.apply(params, tokens(), 2), vanilla.head(params, h), atol=1e-5)


def test_training_free_defaults_and_sweeps():
  vanilla, params = make(kind="looped", n_layers=3)
  cfg = training_free.wrap(vanilla.cfg, "")
  assert (cfg.window, cfg.substeps, cfg.damping) == ("1:2", 6, 0.5)
  tf = build(cfg, VOCAB)
  chex.assert_shape(tf.loop_logits(params, tokens(), READ, 5), (5, 3, VOCAB))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("kw, message", [
    ({"kind": "mamba"}, "model.kind='mamba' is not one of looped, prelude_core_coda"),
    ({"kind": "looped", "n_prelude": 1}, "model.n_prelude=1: model.kind='looped' has no n_prelude (an option of "
                                         "prelude_core_coda, hyperloop, exit_gate)"),
    ({"kind": "prelude_core_coda", "n_coda": -1}, "model.n_coda=-1 must be >= 0"),
    ({"kind": "prelude_core_coda", "n_prelude": 1, "resid_dropout": 0.1}, "the begin/end blocks run without dropout"),
    ({"kind": "looped", "n_streams": 2}, "model.n_streams=2: model.kind='looped' has no n_streams (an option of "
                                         "hyperloop)"),
    ({"kind": "hyperloop", "n_streams": 0}, "model.n_streams=0 must be >= 1"),
    ({"kind": "exit_gate", "exit_beta": -0.1}, "model.exit_beta=-0.1 must be >= 0"),
    ({"kind": "training_free", "n_layers": 3, "window": "1:4"}, "model.window='1:4' is outside the model's 3 layers"),
    ({"kind": "training_free", "n_layers": 3, "window": "2:2"}, "model.window='2:2' is outside"),
    ({"kind": "training_free", "n_layers": 3, "window": "1-2"}, "model.window='1-2' is not 'a:b'"),
    ({"kind": "training_free", "n_layers": 3, "window": "0:1", "damping": 1.5}, "model.damping=1.5 must be in"),
])
def test_bad_sizes_are_one_line_errors(kw, message):
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
    dataclasses.replace(BASE, **kw).validate()
  assert "\n" not in str(e.value)


def test_training_free_spec_errors():
  cfg = dataclasses.replace(BASE, n_layers=3)
  with pytest.raises(ConfigError, match="training-free 'K=6' is not one of"):
    training_free.wrap(cfg, "K=6")
  with pytest.raises(ConfigError, match="training-free substeps='x': expected int"):
    training_free.wrap(cfg, "substeps=x")
  with pytest.raises(ConfigError, match="wraps a model.kind=looped checkpoint"):
    training_free.wrap(dataclasses.replace(cfg, kind="hyperloop"), "window=0:1")
