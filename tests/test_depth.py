"""Depth-loop variants are exact: one program for every R, steps compiled ahead, unrolling, per-loop remat,
truncated backprop through depth."""
from concurrent import futures
import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from looprec import loop, models, sharding, train
from looprec.config import ConfigError, ModelConfig, Recurrence, TrainConfig

MODEL = models.build(ModelConfig(d_model=32, n_heads=2, n_layers=2, injection="add", attn_window=3), 11)
PARAMS = MODEL.init(jax.random.PRNGKey(0), 7)


def batch():
  r = np.random.default_rng(0)
  tokens = r.integers(1, 11, (8, 7)).astype(np.int32)
  tokens[:, 5:] = 0
  return {"tokens": jnp.asarray(tokens), "read_pos": jnp.full((8,), 4, jnp.int32),
          "target": jnp.asarray(r.integers(1, 11, 8), jnp.int32)}


@functools.partial(jax.jit, static_argnames=("n_loops", "scan"))
def grads(params, n_loops, n_active=None, scan=loop.PLAIN):
  loss = lambda p: train.loss_fn(p, batch(), None, n_active, model=MODEL, n_loops=n_loops, label_smoothing=0.0,
                                 scan=scan)[0]
  return jax.value_and_grad(loss)(params)


def assert_close(a, b, atol):
  chex.assert_trees_all_close(a, b, atol=atol, rtol=0)


@pytest.mark.parametrize("r", [1, 4])
def test_one_program_to_r_max_equals_the_static_r_program(r):
  """Loss and gradients of R loops in a program compiled for R_max = 6 equal those of the R-loop program."""
  want, got = grads(PARAMS, r), grads(PARAMS, 6, jnp.int32(r))
  assert not np.allclose(float(want[0]), float(grads(PARAMS, r + 1)[0]))  # R matters, so the check can fail
  assert_close(got, want, atol=2e-6)


def test_per_example_loops_equal_each_example_run_alone():
  """R per example (recurrence difficulty:R_max) in one program compiled for R_max = 6: each example's loss and
  gradient equal those of a static program with its own R; the batch's is their mean."""
  loops_B = np.array([1, 2, 3, 6, 4, 1, 5, 2], np.int32)
  def one(b, r):
    ex = jax.tree_util.tree_map(lambda x: x[b:b + 1], batch())
    return jax.value_and_grad(lambda p: train.loss_fn(p, ex, None, model=MODEL, n_loops=r, label_smoothing=0.0)[0])(PARAMS)
  want = jax.tree_util.tree_map(lambda *xs: sum(xs) / len(xs), *(one(b, int(r)) for b, r in enumerate(loops_B)))
  per_example = jax.value_and_grad(lambda p: train.loss_fn(p, {**batch(), "loops": jnp.asarray(loops_B)}, None,
                                                          model=MODEL, n_loops=6, label_smoothing=0.0)[0])(PARAMS)
  assert not np.allclose(float(want[0]), float(grads(PARAMS, 6)[0]))  # R matters, so the check can fail
  assert_close(per_example, want, atol=2e-6)
  rec = Recurrence.parse("difficulty:4")
  assert (rec.min_loops, rec.max_loops, str(rec), train.draw_loops(rec, 0, 7)) == (1, 4, "difficulty:4", 4)
  assert train.with_loops(rec, {"hop": np.array([0, 3, 9])})["loops"].tolist() == [1, 3, 4]


@pytest.mark.parametrize("remat", ["loop", "dots"])
def test_remat_gives_the_same_loss_and_gradients(remat):
  assert_close(grads(PARAMS, 5, scan=loop.Scan(remat=remat)), grads(PARAMS, 5), atol=1e-6)
  assert_close(grads(PARAMS, 5, jnp.int32(3), scan=loop.Scan(remat=remat)), grads(PARAMS, 3), atol=2e-6)


@pytest.mark.parametrize("unroll", [2, 5, 9])
def test_unrolled_scan_gives_the_same_loss_and_gradients(unroll):
  """Partly (2 of 5), fully (5) and over-unrolled (9 > R) scans equal the rolled one, also under remat and
  truncation, and in the one-program mode."""
  assert_close(grads(PARAMS, 5, scan=loop.Scan(unroll=unroll)), grads(PARAMS, 5), atol=1e-6)
  assert_close(grads(PARAMS, 5, scan=loop.Scan(unroll, "loop", 2)),
               grads(PARAMS, 5, scan=loop.Scan(backprop_loops=2)), atol=1e-6)
  assert_close(grads(PARAMS, 5, jnp.int32(3), scan=loop.Scan(unroll=unroll)), grads(PARAMS, 3), atol=2e-6)


def reference_truncated(params, n_loops, k):
  """Autodiff of an explicit Python loop whose state is stop_gradient-ed after the first n_loops - k loops."""
  b = batch()

  def loss(p):
    h, step = MODEL.loop_step(p, b["tokens"])
    for t in range(n_loops):
      if t == n_loops - k:
        h = jax.lax.stop_gradient(h)
      h, _ = step(h, jnp.int32(t), None)
    logits = MODEL.head(p, MODEL.answer_hidden(p, h, b["read_pos"]))
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), b["target"][:, None], 1))

  return jax.value_and_grad(loss)(params)


@pytest.mark.parametrize("k", [1, 2])
def test_truncated_backprop_equals_the_explicit_stop_gradient_reference(k):
  got = grads(PARAMS, 5, scan=loop.Scan(backprop_loops=k))
  assert_close(got, reference_truncated(PARAMS, 5, k), atol=1e-6)
  full = grads(PARAMS, 5)
  assert np.isclose(float(got[0]), float(full[0]))  # the forward pass is unchanged
  assert not np.allclose(got[1]["block"]["layer_0"]["fc"]["kernel"], full[1]["block"]["layer_0"]["fc"]["kernel"])
  with_remat = grads(PARAMS, 5, scan=loop.Scan(remat="loop", backprop_loops=k))
  assert_close(with_remat, got, atol=1e-6)


def test_truncation_at_or_beyond_r_is_full_backprop():
  assert_close(grads(PARAMS, 3, scan=loop.Scan(backprop_loops=3)), grads(PARAMS, 3), atol=0)
  assert_close(grads(PARAMS, 3, scan=loop.Scan(backprop_loops=9)), grads(PARAMS, 3), atol=0)


def temp_bytes(n_loops, scan):
  b = batch()
  fn = jax.jit(lambda p: jax.grad(lambda q: train.loss_fn(q, b, None, model=MODEL, n_loops=n_loops,
                                                            label_smoothing=0.0, scan=scan)[0])(p))
  return fn.lower(PARAMS).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.slow
def test_remat_and_truncation_flatten_activation_memory_in_r():
  """Compiled temp memory from R=4 to R=64: grows with R by default, much less with remat, not with truncation."""
  grow = {name: temp_bytes(64, bp) / temp_bytes(4, bp)
          for name, bp in {"off": loop.PLAIN, "loop": loop.Scan(remat="loop"),
                           "k=2": loop.Scan(backprop_loops=2)}.items()}
  assert grow["off"] > 5
  assert grow["loop"] < grow["off"] / 3
  assert grow["k=2"] < 1.2


def test_one_program_train_steps_match_per_r_steps():
  """Three optimizer steps with R = 2, 4, 3 give the same losses and params either way, from one compile."""
  mesh = sharding.make_mesh()
  tx = train.make_optimizer(TrainConfig(warmup_steps=2))
  runs = {}
  b = sharding.put_batch(jax.device_get(batch()), mesh)
  for name in ("per_r", "one"):
    fns = train.make_programs(TrainConfig(loop_programs=name), MODEL, tx, mesh, max_loops=4)
    state = train.init_state(MODEL, tx, jax.random.PRNGKey(0), 7, mesh)
    losses = []
    for r in (2, 4, 3):
      state, m = fns.step(state, b, r)
      losses.append(float(m["loss"]))
    runs[name] = (losses, state.params, len(fns._cache))  # pylint: disable=protected-access
  np.testing.assert_allclose(runs["one"][0], runs["per_r"][0], atol=1e-6)
  assert_close(runs["one"][1], runs["per_r"][1], atol=1e-5)
  assert (runs["per_r"][2], runs["one"][2]) == (3, 1)
  with pytest.raises(ValueError, match="outside 1..4"):
    fns.step(state, b, 5)


def test_steps_compiled_ahead_equal_lazily_compiled_ones():
  """precompile builds, in background threads, the programs that lazy compilation builds: the same losses and
  params bit for bit, and each step runs its precompiled program (no lazy jit behind it)."""
  mesh = sharding.make_mesh()
  tx = train.make_optimizer(TrainConfig(warmup_steps=2))
  b = sharding.put_batch(jax.device_get(batch()), mesh)
  runs = {}
  for ahead in (False, True):
    fns = (train.AheadPrograms if ahead else train.Programs)(MODEL, tx, mesh, 0.0)
    state = train.init_state(MODEL, tx, jax.random.PRNGKey(0), 7, mesh)
    fns.prepare(state, lambda: (b, [3, 2]))
    losses = []
    for r in (2, 3, 2):
      state, m = fns.step(state, b, r)
      losses.append(float(m["loss"]))
    cache = fns._cache  # pylint: disable=protected-access
    programs = {k[:2]: isinstance(v, jax.stages.Compiled) for k, v in cache.items()}
    runs[ahead] = (losses, state.params, programs, fns.n_programs)
    fns.close()
  assert runs[False][0] == runs[True][0]
  chex.assert_trees_all_equal(runs[False][1], runs[True][1])
  assert runs[True][2] == {(2, False): True, (3, False): True} and not any(runs[False][2].values())
  assert runs[False][3] == 2 and runs[True][3] <= 2  # waits for a compile: the rates of the progress bar restart


def test_close_cancels_the_compiles_not_started():
  """Closing (as training does when it stops) cancels queued compiles: at most the pool's threads finish theirs."""
  mesh = sharding.make_mesh()
  tx = train.make_optimizer(TrainConfig(warmup_steps=2))
  fns = train.AheadPrograms(MODEL, tx, mesh, 0.0)
  state = train.init_state(MODEL, tx, jax.random.PRNGKey(0), 7, mesh)
  fns.prepare(state, lambda: (sharding.put_batch(jax.device_get(batch()), mesh), range(1, 17)))
  fns.close()
  compiles = list(fns._cache.values())  # pylint: disable=protected-access
  started = [f for f in compiles if not f.cancelled()]
  assert len(started) <= fns._pool._max_workers  # pylint: disable=protected-access
  futures.wait(started, timeout=120)  # (futures.wait never returns for a future cancelled by shutdown)
  assert all(f.done() and f.exception() is None for f in started)
  for thread in fns._pool._threads:  # pylint: disable=protected-access
    thread.join(timeout=60)
    assert not thread.is_alive()


def test_bad_depth_options_are_rejected():
  with pytest.raises(ValueError, match="remat='all'"):
    grads(PARAMS, 2, scan=loop.Scan(remat="all"))
  with pytest.raises(ValueError, match="readouts"):
    MODEL.forward(PARAMS, batch()["tokens"], 3, n_active=jnp.int32(2), readout=lambda h, _: h)
  for field, value, msg in (("unroll", 0, "train.unroll"), ("remat", "all", "train.remat"), ("backprop_loops", -1, "train.backprop_loops"),
                            ("loop_programs", "two", "train.loop_programs")):
    with pytest.raises(ConfigError, match=msg):
      TrainConfig(**{field: value}).validate()


@pytest.mark.parametrize("name, per_example", [("per_r", False), ("one", False), ("one", True)])
def test_several_steps_per_call_equal_one_step_per_call_bitwise(name, per_example):
  """train.steps_per_call: six steps with R = 2, 4, 3, 4, 2, 2 and dropout, run as two calls of three steps,
  give the losses and params of six one-step calls bit for bit; also with each example's own R
  (recurrence difficulty:R_max, the batch's `loops`)."""
  dropout_model = models.build(dataclasses.replace(MODEL.cfg, resid_dropout=0.1), 11)
  mesh = sharding.make_mesh()
  tx = train.make_optimizer(TrainConfig(warmup_steps=2))
  programs = train.make_programs(TrainConfig(loop_programs=name), dropout_model, tx, mesh, max_loops=4, min_loops=2)
  loops = [2, 4, 3, 4, 2, 2]
  batches = [jax.device_get(batch()) | {"target": np.full((8,), i + 1, np.int32)} for i in range(6)]
  if per_example:
    batches = [b | {"loops": np.minimum(np.arange(8) % 4 + 1, r).astype(np.int32)} for b, r in zip(batches, loops)]
  one = train.init_state(dropout_model, tx, jax.random.PRNGKey(0), 7, mesh)
  want = []
  for b, r in zip(batches, loops):
    one, m = programs.step(one, sharding.put_batch(b, mesh), r)
    want.append(float(m["loss"]))
  several = train.init_state(dropout_model, tx, jax.random.PRNGKey(0), 7, mesh)
  got = []
  for part in (slice(0, 3), slice(3, 6)):
    several, m = programs.steps(several, sharding.put_batches(batches[part], mesh), loops[part])
    got += [float(x) for x in m["loss"]]
  assert len(set(want)) == 6 and got == want
  chex.assert_trees_all_equal(several.params, one.params)
  assert int(several.step) == 6


def test_steps_per_call_below_one_is_refused():
  with pytest.raises(ConfigError, match="train.steps_per_call=0"):
    TrainConfig(steps_per_call=0).validate()
