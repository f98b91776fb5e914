"""Cached decoding (looprec.decode), the generation task and MELT: per_loop caching is the uncached forward pass
for every kind, the other policies' exact special cases, the cache's bytes per token, bad input."""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from looprec import cli, decode, experiment, generation, melt, models, selection, summary, tables, tasks
from looprec.config import ChainDataConfig, ConfigError, ModelConfig

V = 13
KINDS = {  # every kind, with its blocks run once where it has them; random weights large enough for varied tokens
    "looped": dict(kind="looped", n_layers=2, pos_emb="learned", injection="adapter"),
    "looped_window": dict(kind="looped", attn_window=3, pos_emb="sinusoidal"),
    "prelude_core_coda": dict(kind="prelude_core_coda", n_prelude=1, n_coda=1),
    "hyperloop": dict(kind="hyperloop", n_prelude=1, n_coda=1, n_streams=2),
    "exit_gate": dict(kind="exit_gate", n_prelude=1, n_coda=1),
    "training_free": dict(kind="training_free", n_layers=3, window="1:2", substeps=3, injection="none"),
}


def build(name, **extra):
  cfg = ModelConfig(d_model=16, n_heads=2, init_std=0.3, embed_init_std=1.0, max_positions=16, **KINDS[name], **extra)
  model = models.build(cfg, V)
  params = model.init(jax.random.PRNGKey(0), 8)
  if name == "hyperloop":  # gates off their identity init, so the streams differ
    params["hyper"] = jax.tree_util.tree_map(lambda a: a + 0.3 * jax.random.normal(jax.random.PRNGKey(1), a.shape),
                                             params["hyper"])
  return model, params


PROMPT = jnp.asarray(np.random.default_rng(0).integers(1, V, (3, 4)), jnp.int32)


@pytest.mark.parametrize("name", list(KINDS))
def test_per_loop_cache_is_the_uncached_forward_pass(name):
  """Greedy tokens equal full recomputation's, and the logits of a random sequence fed through the cache one token
  at a time (MELT's transition at alpha = 1 reads the per-loop cache) equal the uncached forward pass's (float32)."""
  model, params = build(name)
  got = decode.generate(model, params, PROMPT, 5, 3, "per_loop")
  want = decode.generate_uncached(model, params, PROMPT, 5, 3)
  np.testing.assert_array_equal(got, want)
  tokens = jnp.asarray(np.random.default_rng(1).integers(1, V, (3, 9)), jnp.int32)
  logits, _ = melt.student_forward(model, {**params, "melt": melt.init_gates(model)}, tokens, 3, 1.0)
  np.testing.assert_allclose(logits, model.apply(params, tokens, 3), atol=2e-5, rtol=0)


@pytest.mark.parametrize("name", [k for k in KINDS if k != "looped_window"])
def test_every_policy_runs_and_the_exact_cases_hold(name):
  """At R = 2: cycle:2 keeps a slot per loop (= per_loop), cycle:1 and melt with closed gates (g = 0) keep the
  last loop's (= last_loop); first_loop and sampling run and write vocabulary tokens."""
  model, params = build(name)
  out = {p: np.asarray(decode.generate(model, params, PROMPT, 4, 2, p)) for p in ("per_loop", "first_loop",
                                                                                  "last_loop", "cycle:1", "cycle:2")}
  closed = {**params, "melt": melt.init_gates(model, -1e4)}
  out["melt"] = np.asarray(decode.generate(model, closed, PROMPT, 4, 2, "melt"))
  np.testing.assert_array_equal(out["cycle:2"], out["per_loop"])
  np.testing.assert_array_equal(out["cycle:1"], out["last_loop"])
  np.testing.assert_array_equal(out["melt"], out["last_loop"])
  sampled = decode.generate(model, params, PROMPT, 4, 2, "per_loop", temperature=1.0, rng=jax.random.PRNGKey(3))
  for tokens in [*out.values(), sampled]:
    assert tokens.shape == (3, 4) and (tokens >= 0).all() and (tokens < V).all()


def test_melt_fold_limits_and_mix():
  """g = 1 keeps loop 0's keys, g = 0 the last loop's; g = 1/2 is the exponential average."""
  x_RxLxBxTxHxK = jax.random.normal(jax.random.PRNGKey(0), (3, 1, 2, 1, 2, 4))
  fold = lambda logit: decode.melt_fold(x_RxLxBxTxHxK, jnp.full((1, 2, 4), logit))
  np.testing.assert_allclose(fold(1e4), x_RxLxBxTxHxK[0], atol=1e-6)
  np.testing.assert_allclose(fold(-1e4), x_RxLxBxTxHxK[-1], atol=1e-6)
  x = x_RxLxBxTxHxK
  np.testing.assert_allclose(fold(0.0), 0.25 * x[0] + 0.25 * x[1] + 0.5 * x[2], atol=1e-6)


def test_cache_bytes_per_token_follow_the_formula():
  """per_loop: 2 (k, v) x 4 bytes x d x N R for the looped block, plus each block run once; melt and the one-loop
  policies: N, flat in R; cycle:k: min(k, R) N."""
  model, _ = build("prelude_core_coda")  # N = 1 looped layer, 1 prelude + 1 coda layer, d = 16
  per_layer = 2 * 4 * 16
  for r in (4, 8, 16, 32):
    assert decode.bytes_per_token(model, decode.parse_policy("per_loop"), r) == per_layer * (r + 2)
    for flat in ("melt", "first_loop", "last_loop"):
      assert decode.bytes_per_token(model, decode.parse_policy(flat), r) == per_layer * 3
    assert decode.bytes_per_token(model, decode.parse_policy("cycle:8"), r) == per_layer * (min(8, r) + 2)
  tf, _ = build("training_free")  # window 1:2 of 3 layers, 3 sub-steps: 3 evaluations of 1 layer per loop
  assert decode.bytes_per_token(tf, decode.parse_policy("per_loop"), 4) == per_layer * (3 * 4 + 2)
  bf16, _ = build("looped", dtype="bfloat16")
  assert decode.bytes_per_token(bf16, decode.parse_policy("per_loop"), 4) == 2 * 2 * 16 * 2 * 4


@pytest.mark.parametrize("policy, prompt_len, n_new, needs", [
    ("bogus", 4, 2, "is not one of per_loop, first_loop"),
    ("cycle:0", 4, 2, "cycle:k needs k >= 1"),
    ("cycle:k", 4, 2, "is not one of"),
    ("per_loop", 12, 5, "exceed model.max_positions=16"),
    ("melt", 4, 2, "run the MELT phase first"),
])
def test_bad_input_is_one_line_and_exit_2(policy, prompt_len, n_new, needs, monkeypatch, capsys):
  model, params = build("looped")
  prompt = jnp.ones((1, prompt_len), jnp.int32)
  with pytest.raises(decode.DecodeError, match=needs) as err:
    decode.generate(model, params, prompt, n_new, 2, policy)
  assert "\n" not in str(err.value) and isinstance(err.value, ConfigError)

  def run(*_):  # the CLI's mapping of a DecodeError raised under it
    raise err.value
  monkeypatch.setattr(experiment, "run", run)
  assert cli.main(["experiment", "depth_extrap"]) == 2
  assert capsys.readouterr().err.strip().splitlines() == [f"error: {err.value}"]


@pytest.mark.parametrize("override, needs", [
    ("policies=per_loop,cycle:0", "decode policy 'cycle:0': cycle:k needs k >= 1"),
    ("policies=bogus", "decode policy 'bogus' is not one of per_loop, first_loop, last_loop, cycle:k, melt"),
    ("eval.max_hop=8", "eval.max_hop=8: a chain of that many hops needs model.max_positions >= 17, got 16"),
    ("written=every", "written='every': one of path, final"),
    ("models.melt.recurrence=fixed:3", "models.melt.recurrence=fixed:3: both models need the same fixed:R"),
    ("speed_new=13", "speed_new=13: 4 prompt tokens and 13 written exceed model.max_positions=16"),
])
def test_the_decoding_experiments_bad_input_is_one_error_line(override, needs, tmp_path, capsys):
  """Through the real CLI: refused before a run folder is made."""
  code = cli.main(["experiment", "decoding", "--preset", "smoke", override, "data.seq_len=10",
                   "--runs-dir", str(tmp_path)])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and err == [f"error: {needs}"], err
  assert not list(tmp_path.iterdir())


def test_a_halted_token_is_the_token_decoded_at_that_fixed_depth():
  """Per-row, per-token halting (argmax stable for one loop, cap 6): each token written equals what per_loop
  decoding at the loop it halted at writes after the same prefix; the loops differ between rows and tokens. A
  threshold never met runs every row to the cap: fixed-R decoding."""
  model, params = build("looped")
  prompt = jnp.asarray(np.random.default_rng(4).integers(1, V, (8, 3)), jnp.int32)
  tokens, loops = (np.asarray(a) for a in decode.generate_halting(model, params, prompt, 4, 6, halt="argmax:n=1"))
  assert len(np.unique(loops)) > 1 and loops.min() >= 1 and loops.max() <= 6
  for i in range(tokens.shape[1]):
    prefix = jnp.concatenate([prompt, jnp.asarray(tokens[:, :i], jnp.int32)], axis=1)
    for depth in np.unique(loops[:, i]):
      logits = decode.teacher_forced(params, prefix, model=model, policy=decode.parse_policy("per_loop"),
                                     n_loops=int(depth))[:, -1]
      rows = loops[:, i] == depth
      np.testing.assert_array_equal(np.argmax(logits, -1)[rows], tokens[rows, i])
  never, at_cap = decode.generate_halting(model, params, prompt, 4, 3, halt="kl:eps=0")
  np.testing.assert_array_equal(never, decode.generate(model, params, prompt, 4, 3))
  assert (np.asarray(at_cap) == 3).all()


def test_halting_decode_refuses_a_model_with_a_coda():
  model, params = build("prelude_core_coda")
  with pytest.raises(decode.DecodeError, match="runs cached blocks besides the looped one"):
    decode.generate_halting(model, params, PROMPT, 2, 3)


def chain_cfg(last_hop=3):
  c = ChainDataConfig(n_entities=12, n_relations=3, seq_len=8, n_eval=16)
  return dataclasses.replace(c, curriculum=dataclasses.replace(c.curriculum, first_hop=1, last_hop=last_hop))


def test_generation_task_writes_the_depth_task_paths():
  """Held-out prompts and paths are the depth task's held-out chains (the last entity is its answer), every step
  follows the graph; training sequences put each entity after the one before and never show a held-out chain."""
  task = generation.GenerationTask(chain_cfg())
  depth = task.chain.eval_split(3)
  ev = task.eval_split(3)
  np.testing.assert_array_equal(ev["prompt"], depth["tokens"][:, :4])
  np.testing.assert_array_equal(ev["path"][:, -1], depth["target"])
  ent, rel = task.vocab.entity_offset, task.vocab.relation_offset
  for i in range(3):
    before = ev["prompt"][:, 0] if i == 0 else ev["path"][:, i - 1]
    np.testing.assert_array_equal(ev["path"][:, i] - ent,
                                  task.chain.perms_MxN[ev["prompt"][:, 1 + i] - rel, before - ent])
  tr = task.train_examples(3, np.arange(64))
  for row, hop in zip(range(64), tr["hop"]):
    np.testing.assert_array_equal(tr["tokens"][row, hop + 1:2 * hop + 1], tr["path"][row, :hop])
    np.testing.assert_array_equal(tr["targets"][row, hop:2 * hop], tr["path"][row, :hop])
    assert (tr["targets"][row, :hop] == -1).all() and (tr["targets"][row, 2 * hop:] == -1).all()
  assert generation.path_accuracy(ev["path"], ev["path"]) == {"path": 1.0, "final": 1.0}
  wrong_first = ev["path"].copy()
  wrong_first[:, 0] = 0
  assert generation.path_accuracy(wrong_first, ev["path"]) == {"path": 0.0, "final": 1.0}


def test_the_implicit_variant_writes_only_the_final_entity():
  """written="final": the same prompts, the path's last entity as the one token to write, one target per training
  row (at the last relation) and that entity after it."""
  path, final = generation.GenerationTask(chain_cfg()), generation.GenerationTask(chain_cfg(), "final")
  for hop in (1, 3):
    ev_path, ev_final = path.eval_split(hop), final.eval_split(hop)
    np.testing.assert_array_equal(ev_final["prompt"], ev_path["prompt"])
    np.testing.assert_array_equal(ev_final["path"], ev_path["path"][:, -1:])
    assert generation.n_written(hop, "final") == 1 and generation.seq_len(hop, "final") == hop + 2
  tr_path, tr = path.train_examples(3, np.arange(64)), final.train_examples(3, np.arange(64))
  assert tr["tokens"].shape[1] == 3 + 2
  for row, hop in enumerate(tr["hop"]):
    np.testing.assert_array_equal(tr["tokens"][row, :hop + 1], tr_path["tokens"][row, :hop + 1])
    assert tr["tokens"][row, hop + 1] == tr["targets"][row, hop] == tr_path["path"][row, hop - 1]
    assert (tr["targets"][row] >= 0).sum() == 1 and (tr["tokens"][row, hop + 2:] == 0).all()
  with pytest.raises(ValueError, match="written"):
    generation.GenerationTask(chain_cfg(), "every")


def test_the_decoding_experiment_writes_only_the_final_entity_end_to_end(tmp_path, capsys):
  """The smoke preset with written=final through the CLI: one token written per chain, so the whole-path accuracy is
  the final-entity accuracy at every split and R; the report says what was written, and `analyze` (which rebuilds
  the splits from the run's config) gives the sweep of the run itself."""
  assert cli.main(["experiment", "decoding", "--preset", "smoke", "written=final", "--runs-dir", str(tmp_path)]) == 0
  run_dir = os.path.join(tmp_path, "decoding", "latest")
  with open(os.path.join(run_dir, "results.json")) as f:
    results = json.load(f)["models"]
  assert set(results) == {"per_loop", "first_loop", "last_loop", "cycle:2", "melt"}
  for m in results.values():
    assert m["path_accuracy"] == m["accuracy"]
  with open(os.path.join(run_dir, "report.md")) as f:
    assert "to write only the final entity (the implicit variant) of 1..2-hop chains" in f.read()
  assert cli.main(["analyze", run_dir]) == 0
  with open(os.path.join(run_dir, "analysis.json")) as f:
    analyses = json.load(f)["models"]
  assert {p: a["sweep"] for p, a in analyses.items()} == {p: m["accuracy"] for p, m in results.items()}
  for a in analyses.values():  # each chain's right / wrong, what the paired table counts, agrees with the accuracy
    assert {s: {r: sum(c == "1" for c in bits) / len(bits) for r, bits in by_r.items()}
            for s, by_r in a["correct"].items()} == {s: v for s, v in a["sweep"].items() if not selection.is_val(s)}
  out = os.path.join(tmp_path, "decoding_smoke.json")
  assert cli.main(["summarize", "--out", out, run_dir]) == 0
  with open(out) as f:
    got = json.load(f)
  paired = got["runs"][0]["models"]
  assert all(p == {**p, "only_teacher": 0, "only_model": 0} for p in paired["per_loop"]["paired"].values())
  assert set(paired["melt"]["paired"]) == {"1", "2", "3"}  # the smoke preset's test hops with a validation split
  assert tables.decoding_paired(got, "x.json").splitlines()[0] == "| policy | hop 1 | hop 2 |"
  assert tables.decoding_paired(got, "x.json", beyond=True).splitlines()[0] == "| policy | hop 1 | hop 2 | hop 3 |"
  capsys.readouterr()


def test_the_paired_counts_and_mcnemars_p():
  """Chains only the teacher / only the model gets right, each at its own validation-chosen R; the exact
  two-sided McNemar p (a binomial test of the discordant chains at 1/2)."""
  hops = lambda r2: {"2": {"r": r2}, "3": {"r": None}}
  teacher = {"2hop_test": {"1": "1100", "2": "1110"}, "3hop_test": {"1": "0000"}}
  model = {"2hop_test": {"1": "0011", "2": "0111"}, "3hop_test": {"1": "1111"}}
  assert summary._paired(teacher, hops(2), model, hops(1)) == {"2": {"n": 4, "only_teacher": 2, "only_model": 1}}
  assert summary._paired(teacher, hops(1), model, hops(2)) == {"2": {"n": 4, "only_teacher": 1, "only_model": 2}}
  assert tables.mcnemar_p(6, 1) == pytest.approx(0.125) and tables.mcnemar_p(0, 0) == 1.0
  assert tables.mcnemar_p(10, 0) == pytest.approx(2 / 1024) and tables.mcnemar_p(3, 3) == 1.0


def test_the_evaluation_does_not_keep_its_compiled_programs():
  """decoding.evaluate compiles a program per (hop, R) and halting rule; it drops them after each policy, since
  hundreds kept at once exhaust the process's memory maps (vm.max_map_count) and the run dies."""
  from experiments import decoding
  smoke = decoding.smoke()
  cfg = dataclasses.replace(smoke, policies="per_loop,first_loop", halting="argmax",
                            eval=dataclasses.replace(smoke.eval, max_hop=2, max_loops=2))
  chains = tasks.make_task(cfg.data)
  model = cfg.build_model("per_loop", chains.vocab.size)
  splits = decoding.eval_splits(chains, cfg.eval.max_hop, cfg.written)
  got = decoding.evaluate(cfg, model, {"per_loop": model.init(jax.random.PRNGKey(0), 8)}, splits)
  assert set(got) == {"per_loop", "first_loop"} and set(got["per_loop"]["halting"]) == {"argmax"}
  assert decode._program._cache_size() == 0


def test_melt_training_moves_the_gates_and_decodes():
  """A few steps of both phases: the gates train (they get gradients through the shared cache), the KL is
  finite, and the melt policy then decodes."""
  task = generation.GenerationTask(chain_cfg(2))
  model = models.build(ModelConfig(d_model=16, n_heads=2, max_positions=16), task.vocab.size)
  params = model.init(jax.random.PRNGKey(0), 8)
  trained, kls = melt.train(model, params, task, 2, 2, 2, 8, lr=1e-2)
  assert len(kls) == 4 and np.isfinite(kls).all()
  assert float(jnp.abs(trained["melt"]["k"] - melt.GATE_INIT).max()) > 1e-3
  out = decode.generate(model, trained, task.eval_split(2)["prompt"], 2, 2, "melt")
  assert out.shape == (len(task.eval_split(2)["prompt"]), 2)
