"""The model: scan == unrolled loop, R = 1 == a plain transformer, padding invariance, traced API."""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from looprec.config import ModelConfig
from looprec.models import gather_positions
from looprec.models.looped import Block, LoopedTransformer, attention_mask

VOCAB = 17


def tokens():
  return jnp.array([[1, 5, 9, 3, 0, 0], [2, 4, 0, 0, 0, 0], [7, 8, 9, 10, 11, 12]], jnp.int32)


def unrolled(model, params, toks, n_loops):
  """The same block applied in a plain Python loop, injection written out by hand."""
  cfg = model.cfg
  e = model.embed(params, toks)
  mask = attention_mask(toks, cfg.attn_window)
  rope = model._rope(toks.shape[1])
  h = e
  for t in range(n_loops):
    if t > 0 and cfg.injection == "add":
      h = h + e
    elif t > 0 and cfg.injection == "adapter":
      h = jnp.concatenate([h, e], -1) @ params["adapter"]["kernel"] + params["adapter"]["bias"]
    h, _ = Block(cfg).apply({"params": params["block"]}, h, mask, rope)
  return model.head(params, h)


@pytest.mark.parametrize("pos_emb", ["rope", "learned", "sinusoidal", "none"])
@pytest.mark.parametrize("injection", ["add", "adapter", "none"])
def test_scan_equals_unrolled_loop(pos_emb, injection):
  cfg = ModelConfig(d_model=32, n_heads=4, n_layers=2, pos_emb=pos_emb, injection=injection, attn_window=3)
  model = LoopedTransformer(cfg, VOCAB)
  params = model.init(jax.random.PRNGKey(0))
  for r in (1, 2, 5):
    chex.assert_trees_all_close(model.apply(params, tokens(), r), unrolled(model, params, tokens(), r),
                                atol=1e-5, rtol=1e-5)


def test_one_loop_is_a_plain_transformer():
  """R = 1 of an L-layer block equals running the L layers once, whatever the injection mode."""
  cfg = ModelConfig(d_model=32, n_heads=4, n_layers=3, injection="add")
  model = LoopedTransformer(cfg, VOCAB)
  params = model.init(jax.random.PRNGKey(1))
  plain = LoopedTransformer(dataclasses.replace(cfg, injection="none"), VOCAB)
  chex.assert_trees_all_close(model.apply(params, tokens(), 1), plain.apply(params, tokens(), 1), atol=1e-6)
  # and a looped 1-layer block run R times equals an R-layer stack with tied weights
  cfg1 = ModelConfig(d_model=32, n_heads=4, n_layers=1, injection="none")
  m1, m3 = LoopedTransformer(cfg1, VOCAB), LoopedTransformer(dataclasses.replace(cfg1, n_layers=3), VOCAB)
  p1 = m1.init(jax.random.PRNGKey(2))
  layer = p1["block"]["layer_0"]
  p3 = {**p1, "block": {f"layer_{i}": layer for i in range(3)}}
  # out-init scale depends on n_layers only at init, so the tied copies are the same function
  chex.assert_trees_all_close(m1.apply(p1, tokens(), 3), m3.apply(p3, tokens(), 1), atol=1e-5)


@pytest.mark.parametrize("pos_emb", ["rope", "learned", "none"])
def test_extra_right_padding_does_not_change_the_answer(pos_emb):
  cfg = ModelConfig(d_model=32, n_heads=4, n_layers=1, pos_emb=pos_emb, attn_window=0)
  model = LoopedTransformer(cfg, VOCAB)
  params = model.init(jax.random.PRNGKey(3))
  toks = tokens()
  read = jnp.array([3, 1, 5])
  padded = jnp.pad(toks, ((0, 0), (0, 7)))
  short = model.answer_logits(params, toks, read, 4)
  long = model.answer_logits(params, padded, read, 4)
  chex.assert_trees_all_close(short, long, atol=1e-5)


def test_zero_init_output_projections_make_each_layer_the_identity():
  cfg = ModelConfig(d_model=32, n_heads=4, n_layers=2, out_init_scale=0.0, pos_emb="none", injection="none")
  model = LoopedTransformer(cfg, VOCAB)
  params = model.init(jax.random.PRNGKey(4))
  h, _ = model.forward(params, tokens(), 3)
  chex.assert_trees_all_close(h, model.embed(params, tokens()), atol=1e-7)


def test_traced_loop_matches_the_fixed_loops():
  cfg = ModelConfig(d_model=32, n_heads=4, n_layers=2)
  model = LoopedTransformer(cfg, VOCAB)
  params = model.init(jax.random.PRNGKey(5))
  read = jnp.array([3, 1, 5])
  tr = model.trace(params, tokens(), read, 6, per_layer=True)
  chex.assert_shape(tr["hidden"], (6, 3, 6, 32))
  chex.assert_shape(tr["layers"], (6, 2, 3, 6, 32))
  chex.assert_shape(tr["layer_logits"], (6, 2, 3, VOCAB))
  for r in (1, 3, 6):
    chex.assert_trees_all_close(tr["logits"][r - 1], model.answer_logits(params, tokens(), read, r), atol=1e-5)
  chex.assert_trees_all_close(tr["layer_logits"][:, -1], tr["logits"], atol=1e-5)
  chex.assert_trees_all_close(model.loop_logits(params, tokens(), read, 6), tr["logits"], atol=1e-6)


def test_window_limits_attention():
  mask = np.asarray(attention_mask(jnp.ones((1, 5), jnp.int32), window=2))[0, 0]
  assert mask.sum(1).tolist() == [1, 2, 2, 2, 2]
  assert not mask[4, 2] and mask[4, 3] and mask[4, 4]


def test_pads_are_masked_as_keys():
  mask = np.asarray(attention_mask(jnp.array([[3, 4, 0, 0]]), window=0))[0, 0]
  assert mask[3].tolist() == [True, True, False, False]


@pytest.mark.parametrize("which", ["embed_dropout", "attn_dropout", "resid_dropout"])
def test_each_dropout_needs_rng_and_is_deterministic_without(which):
  cfg = ModelConfig(d_model=32, n_heads=4, **{which: 0.5})
  model = LoopedTransformer(cfg, VOCAB)
  params = model.init(jax.random.PRNGKey(6))
  a = model.apply(params, tokens(), 3)
  chex.assert_trees_all_close(a, model.apply(params, tokens(), 3))
  b = model.apply(params, tokens(), 3, rng=jax.random.PRNGKey(0))
  assert not np.allclose(a, b)


def test_init_scales_follow_the_config():
  """Embeddings N(0, embed_init_std); output projections init_std x out_init_scale, / sqrt(2L) only when scaled."""
  base = ModelConfig(d_model=64, n_heads=4, n_layers=2, pos_emb="learned", max_positions=64)
  for cfg, emb, out in ((base, 0.02, 0.02 / 2), (dataclasses.replace(base, embed_init_std=1.0, out_init_scaled=False),
                                                 1.0, 0.02)):
    params = LoopedTransformer(cfg, 512).init(jax.random.PRNGKey(0))
    assert np.std(params["embed"]) == pytest.approx(emb, rel=0.05)
    assert np.std(params["pos"]) == pytest.approx(emb, rel=0.05)
    layer = params["block"]["layer_0"]
    assert np.std(layer["proj"]["kernel"]) == pytest.approx(out, rel=0.05)
    assert np.std(layer["attn"]["out"]["kernel"]) == pytest.approx(out, rel=0.05)
    assert np.std(layer["fc"]["kernel"]) == pytest.approx(0.02, rel=0.05)


def test_ln_eps_reaches_every_layernorm():
  """A tiny-variance input makes the normalised output depend on eps: equal eps, equal logits; else not."""
  cfg = ModelConfig(d_model=32, n_heads=4, n_layers=1, init_std=1e-4, embed_init_std=1e-4, injection="none")
  params = LoopedTransformer(cfg, VOCAB).init(jax.random.PRNGKey(0))
  a = LoopedTransformer(cfg, VOCAB).apply(params, tokens(), 2)
  b = LoopedTransformer(dataclasses.replace(cfg, ln_eps=1e-5), VOCAB).apply(params, tokens(), 2)
  assert not np.allclose(a, b, atol=1e-4)


def test_bfloat16_compute_stays_close():
  cfg = ModelConfig(d_model=32, n_heads=4, n_layers=1)
  m32, m16 = LoopedTransformer(cfg, VOCAB), LoopedTransformer(dataclasses.replace(cfg, dtype="bfloat16"), VOCAB)
  params = m32.init(jax.random.PRNGKey(7))
  a, b = m32.apply(params, tokens(), 2), m16.apply(params, tokens(), 2)
  assert b.dtype == jnp.float32 and np.abs(np.asarray(a) - np.asarray(b)).max() < 0.1


def test_gather_positions():
  h = jnp.arange(2 * 3 * 1).reshape(2, 3, 1)
  assert gather_positions(h, jnp.array([2, 0])).ravel().tolist() == [2, 3]


def test_zero_loops_rejected():
  model = LoopedTransformer(ModelConfig(d_model=32, n_heads=4), VOCAB)
  params = model.init(jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="n_loops"):
    model.apply(params, tokens(), 0)


def test_every_position_targets_give_the_mean_cross_entropy_of_the_supervised_positions():
  """A batch with `targets` (a task that supervises every position) is scored by the mean cross-entropy of its
  nonzero targets, from `apply`'s logits; with the answer as the only target it is the answer-token loss."""
  model = LoopedTransformer(ModelConfig(d_model=32, n_heads=2, n_layers=1, injection="add"), VOCAB)
  params = model.init(jax.random.PRNGKey(0), 6)
  toks = tokens()
  read_pos, target = jnp.array([3, 1, 5]), jnp.array([4, 6, 8])
  targets = jnp.array([[0, 2, 3, 4, 0, 0], [5, 6, 0, 0, 0, 0], [1, 0, 0, 9, 2, 8]])
  loss, acc = model.loss(params, {"tokens": toks, "read_pos": read_pos, "target": target, "targets": targets}, 3)
  logp = jax.nn.log_softmax(model.apply(params, toks, 3))
  rows, cols = np.nonzero(np.asarray(targets))
  want = -np.mean(np.asarray(logp)[rows, cols, np.asarray(targets)[rows, cols]])
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  answers = np.asarray(jnp.argmax(gather_positions(logp, read_pos), -1))
  assert float(acc) == np.mean(answers == np.asarray(target))
  only_answer = jnp.zeros_like(targets).at[jnp.arange(3), read_pos].set(target)
  got = model.loss(params, {"tokens": toks, "read_pos": read_pos, "target": target, "targets": only_answer}, 3)
  chex.assert_trees_all_close(got, model.loss(params, {"tokens": toks, "read_pos": read_pos, "target": target}, 3),
                              atol=1e-6)
