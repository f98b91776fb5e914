"""Halting policies on hand-checkable logit sequences, and the while_loop that really stops."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from looprec import halting, sharding
from looprec.config import ConfigError, ModelConfig
from looprec.models import gather_positions
from looprec.models.looped import LoopedTransformer

V = 32  # log(32) = 3.47 nats > the default entropy threshold of 3.0


def peaked(answer, scale=20.0):
  return scale * jax.nn.one_hot(answer, V)


def decide(spec, logits_RxBxV, hidden_RxBxD=None):
  loops_B, answer_B = halting.decide(halting.parse_policy(spec), jnp.asarray(logits_RxBxV), hidden_RxBxD)
  return np.asarray(loops_B).tolist(), np.asarray(answer_B).tolist()


def test_kl_entropy_kl_and_entropy_rules():
  # example 0: answer 3, then 5 from loop 2 on (sure): converges at loop 3. example 1: uniform at every loop.
  ex0 = [peaked(3), peaked(5), peaked(5), peaked(5), peaked(5)]
  ex1 = [jnp.zeros(V)] * 5
  logits_RxBxV = jnp.stack([jnp.stack(pair) for pair in zip(ex0, ex1)])
  assert decide("kl_entropy", logits_RxBxV) == ([3, 5], [5, 0])  # ex1 never sure: runs to the cap (5)
  assert decide("kl", logits_RxBxV) == ([3, 2], [5, 0])  # KL only: ex1 stops at loop 2 (t >= 2)
  assert decide("entropy", logits_RxBxV) == ([1, 5], [3, 0])  # entropy only: ex0 sure from loop 1
  assert decide("entropy:max_entropy=3.5", logits_RxBxV) == ([1, 1], [3, 0])


def test_relative_entropy_bound_scales_with_the_answer_set():
  """kl_entropy_rel's bound is max_entropy_frac x ln |answers|: the paper's 3.0 nats at 200 answers, and the same
  decisions as the absolute rule with that bound at any other size; no size, no thresholds."""
  rel = halting.parse_policy("kl_entropy_rel")
  values, used = rel.thresholds(200)
  paper_values, paper_used = halting.parse_policy("kl_entropy").thresholds()
  np.testing.assert_allclose(values, paper_values, rtol=1e-6)
  np.testing.assert_array_equal(used, paper_used)
  ex = [peaked(3, 3.0)] * 5  # a hesitant guess over 32: entropy 2.75 nats, unchanged across loops
  logits_RxBxV = jnp.stack([jnp.stack([e]) for e in ex])
  for answers, frac in ((20, 0.9), (32, 0.7), (32, 0.8)):
    pol = halting.parse_policy(f"kl_entropy_rel:max_entropy_frac={frac}")
    absolute = halting.parse_policy(f"kl_entropy:max_entropy={frac * np.log(answers)}")
    got = halting.decide(pol, logits_RxBxV, answers=answers)
    assert [np.asarray(x).tolist() for x in got] == [np.asarray(x).tolist() for x in halting.decide(absolute,
                                                                                                 logits_RxBxV)]
  assert decide_rel(logits_RxBxV, 0.7, 32) == [5] and decide_rel(logits_RxBxV, 0.8, 32) == [2]
  with pytest.raises(ConfigError, match="needs the answer-set size"):
    rel.thresholds()


def decide_rel(logits_RxBxV, frac, answers):
  pol = halting.parse_policy(f"kl_entropy_rel:max_entropy_frac={frac}")
  return np.asarray(halting.decide(pol, logits_RxBxV, answers=answers)[0]).tolist()


def test_argmax_rule_counts_unchanged_loops():
  answers = [1, 2, 2, 2, 4, 4]
  logits_RxBxV = jnp.stack([peaked(a)[None] for a in answers])
  assert decide("argmax", logits_RxBxV) == ([4], [2])  # loops 2, 3, 4 agree: unchanged for 2 loops at loop 4
  assert decide("argmax:n=1", logits_RxBxV) == ([3], [2])
  assert decide("argmax:n=3", logits_RxBxV) == ([6], [4])  # never: the cap


def test_latent_rule_uses_relative_change_of_the_hidden_state():
  h = jnp.array([1.0, 0.0])
  hidden_RxBxD = jnp.stack([h, 2 * h, 2 * h + 1e-3, 2 * h + 2e-3])[:, None]  # changes 0.5, 5e-4, 5e-4
  logits_RxBxV = jnp.zeros((4, 1, V))
  assert decide("latent", logits_RxBxV, hidden_RxBxD)[0] == [3]
  assert decide("latent:delta=0.6", logits_RxBxV, hidden_RxBxD)[0] == [2]
  assert decide("latent:delta=1e-4", logits_RxBxV, hidden_RxBxD)[0] == [4]


@pytest.mark.parametrize("spec,message", [
    ("nope", "unknown halting policy 'nope'"),
    ("kl_entropy:eps=-1", "eps=-1.0 must be >= 0"),
    ("entropy:max_entropy=nan", "max_entropy=nan must be >= 0"),
    ("latent:delta=-0.1", "delta=-0.1 must be >= 0"),
    ("argmax:n=0", "n=0.0 must be an integer >= 1"),
    ("argmax:n=1.5", "n=1.5 must be an integer >= 1"),
    ("kl:delta=1", "has no parameter 'delta'"),
    ("kl:eps", "is not key=number"),
])
def test_bad_policies(spec, message):
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
    halting.parse_policy(spec)


@pytest.fixture(scope="module")
def tiny():
  model = LoopedTransformer(ModelConfig(d_model=16, n_heads=2, n_layers=1, injection="add", init_std=0.5,
                                        embed_init_std=0.5), vocab_size=V)
  params = model.init(jax.random.PRNGKey(0))
  tokens_BxT = jax.random.randint(jax.random.PRNGKey(1), (8, 5), 1, V)
  read_pos_B = jnp.full((8,), 4)
  return model, params, tokens_BxT, read_pos_B, halting.compiled(model, sharding.make_mesh())


def test_while_loop_stops_when_all_halted(tiny):
  model, params, tokens_BxT, read_pos_B, fn = tiny
  always = halting.parse_policy("kl_entropy:eps=inf,max_entropy=inf")  # met as soon as a previous loop exists
  loops_B, answer_B, executed = fn(params, tokens_BxT, read_pos_B, always.thresholds(), 20)
  assert int(executed) == 2 and np.all(np.asarray(loops_B) == 2)
  logits_RxBxV = model.loop_logits(params, tokens_BxT, read_pos_B, 2)
  np.testing.assert_array_equal(answer_B, jnp.argmax(logits_RxBxV[1], -1))


@pytest.mark.parametrize("spec", ["kl_entropy:eps=0,max_entropy=0", "kl:eps=0", "entropy:max_entropy=0",
                                  "latent:delta=0", "argmax:n=12"])
def test_unreachable_threshold_is_fixed_cap(tiny, spec):
  model, params, tokens_BxT, read_pos_B, fn = tiny
  cap = 12
  loops_B, answer_B, executed = fn(params, tokens_BxT, read_pos_B, halting.parse_policy(spec).thresholds(), cap)
  assert int(executed) == cap and np.all(np.asarray(loops_B) == cap)
  fixed_BxV = jax.jit(model.answer_logits, static_argnames="n_loops")(params, tokens_BxT, read_pos_B, n_loops=cap)
  np.testing.assert_array_equal(answer_B, jnp.argmax(fixed_BxV, -1))


def test_while_loop_agrees_with_the_rule_on_the_trace(tiny):
  """Per example, the while_loop halts where the rule applied to the recorded per-loop trace says."""
  model, params, tokens_BxT, read_pos_B, fn = tiny
  trace = model.trace(params, tokens_BxT, read_pos_B, 10)
  hidden_RxBxD = jax.vmap(gather_positions, (0, None))(trace["hidden"], read_pos_B)
  for spec in ["kl_entropy:eps=0.1,max_entropy=2.5", "kl:eps=0.01", "entropy:max_entropy=2", "argmax:n=2",
               "latent:delta=0.3"]:
    pol = halting.parse_policy(spec)
    loops_B, answer_B, _ = fn(params, tokens_BxT, read_pos_B, pol.thresholds(), 10)
    want_loops_B, want_answer_B = halting.decide(pol, trace["logits"], hidden_RxBxD)
    np.testing.assert_array_equal(loops_B, want_loops_B)
    assert spec.startswith("latent") or len(set(np.asarray(loops_B).tolist())) > 1  # examples halt apart
    np.testing.assert_array_equal(answer_B, want_answer_B)
