"""Systematicity (RECIPE task A): the composition data stream, the logit lens, presets, and kill and resume (the
smoke preset end to end with its curves, stages, lens, figures and analysis: tests/test_experiments_smoke.py)."""
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import ROOT, check_against_official, results_of, run_cli
from data_gen import composition
from data_gen.__main__ import composition_dataset
from data_gen.io import write_dataset
from experiments import systematicity
from looprec import config as C, data, eval as evaluation, lens, sharding
from looprec.config import CompositionDataConfig, ConfigError, ModelConfig
from looprec.selection import val_split
from looprec.models.looped import LoopedTransformer

SMALL = CompositionDataConfig(n_entities=30, n_relations=6, out_degree=4, ood_ratio=0.2, phi=2.0, n_probe=200)


def decode(task, ex):
  """(head, relations, tail) entity/relation indices of encoded examples."""
  v = task.vocab
  heads = ex["tokens"][:, 0] - v.entity_offset
  rels = [[t - v.relation_offset for t in row[1:1 + hop]] for row, hop in zip(ex["tokens"], ex["hop"])]
  return heads, rels, ex["target"] - v.entity_offset


def graph():
  """(atomic: (head, relation) -> tail, the set of OOD (head, relation)) of the SMALL dataset."""
  d = composition.make_composition(SMALL.seed, 30, 6, 4, 0.2, 2.0, 200)
  atomic = {(h, r[0]): t for f in (d.splits["id_atomic"], d.splits["ood_atomic"])
            for h, r, t in zip(f.heads_B, f.rels_BxK, f.tails_B)}
  return atomic, {(h, r[0]) for h, r in zip(d.splits["ood_atomic"].heads_B, d.splits["ood_atomic"].rels_BxK)}


def test_ood_atomic_facts_are_trained_but_never_composed():
  task = data.make_task(SMALL)
  atomic, ood = graph()
  heads, rels, tails = decode(task, task.train)
  trained_atomic = {(h, r[0]) for h, r in zip(heads, rels) if len(r) == 1}
  assert trained_atomic == set(atomic) and ood <= trained_atomic
  two_hop = [(h, r) for h, r in zip(heads, rels) if len(r) == 2]
  assert len(two_hop) == round(2.0 * (len(atomic) - len(ood)))
  for (h, (r1, r2)), t in zip(two_hop, tails[[len(r) == 2 for r in rels]]):
    bridge = atomic[h, r1]
    assert (h, r1) not in ood and (bridge, r2) not in ood and atomic[bridge, r2] == t
  for name in ("test_inferred_ood", "test_inferred_ood_first", "test_inferred_ood_second"):
    h, r, _ = decode(task, task.probes[name])
    firsts = {(a, b[0]) in ood for a, b in zip(h, r)}
    seconds = {(atomic[a, b[0]], b[1]) in ood for a, b in zip(h, r)}
    assert (firsts, seconds) == {"test_inferred_ood": ({True}, {True}), "test_inferred_ood_first": ({True}, {False}),
                                 "test_inferred_ood_second": ({False}, {True})}[name]


def test_atomic_repeats_multiply_only_the_atomic_rows():
  once, thrice = data.make_task(SMALL), data.make_task(C.override(SMALL, ["atomic_repeats=3"]))
  for hop, factor in ((1, 3), (2, 1)):
    rows = lambda task: sorted(map(tuple, np.c_[task.train["tokens"], task.train["target"]][task.train["hop"] == hop]))
    assert rows(thrice) == sorted(rows(once) * factor)


def test_batch_last_is_the_official_collate():
  """answer_at=batch_last: the rows a batch (or probe split) holds, padded to its longest and read at the last
  position, give the logits a model computes on exactly that padded batch (pad_sequence + logits[:, -1])."""
  task = data.make_task(C.override(SMALL, ["answer_at=batch_last"]))
  plain = data.make_task(SMALL)
  model = LoopedTransformer(ModelConfig(d_model=32, n_heads=2, pos_emb="learned", max_positions=4, injection="none",
                                        embed_init_std=1.0), task.vocab.size)
  params = model.init(jax.random.PRNGKey(0))
  ex = task.train_examples(2, np.arange(64))
  assert set(ex["hop"]) == {1, 2} and (ex["read_pos"] == 2).all()
  np.testing.assert_array_equal(ex["tokens"], plain.train_examples(2, np.arange(64))["tokens"])
  official = model.apply(params, ex["tokens"], 2)[:, -1]  # every row padded to 3 tokens, read at the last
  np.testing.assert_allclose(model.answer_logits(params, ex["tokens"], ex["read_pos"], 2), official, atol=1e-5)
  atomic_rows = np.flatnonzero(task.train["hop"] == 1)[:16]
  only_atomic = data._batch_last(data.take(task.train, atomic_rows))  # pylint: disable=protected-access
  assert (only_atomic["read_pos"] == 1).all()
  official = model.apply(params, only_atomic["tokens"][:, :2], 2)[:, -1]  # the batch's longest row has 2 tokens
  np.testing.assert_allclose(model.answer_logits(params, only_atomic["tokens"], only_atomic["read_pos"], 2),
                             official, atol=1e-5)
  for name, probe in task.probes.items():
    assert (probe["read_pos"] == (1 if "atomic" in name else 2)).all(), name
  # learned positions: the pad after an atomic fact's relation is a different place from the relation itself
  atomic_mixed = ex["hop"] == 1
  at_relation = model.answer_logits(params, ex["tokens"], np.where(atomic_mixed, 1, 2), 2)
  at_pad = model.answer_logits(params, ex["tokens"], ex["read_pos"], 2)
  assert not np.allclose(at_relation[atomic_mixed], at_pad[atomic_mixed], atol=1e-3)


def test_held_out_probes_are_halved_into_test_and_validation():
  task, whole = data.make_task(SMALL), composition.make_composition(SMALL.seed, 30, 6, 4, 0.2, 2.0, 200).probes
  for name, facts in whole.items():
    if not name.startswith("test_"):
      assert len(task.probes[name]["target"]) == len(facts.tails_B)
      continue
    test, val = ([(int(h), tuple(map(int, r))) for h, r in zip(*decode(task, task.probes[s])[:2])]
                 for s in (name, val_split(name)))
    assert len(test) == (len(facts.tails_B) + 1) // 2 and len(val) == len(facts.tails_B) // 2
    assert not set(test) & set(val)
    assert sorted(test + val) == sorted((int(h), tuple(r)) for h, r in zip(facts.heads_B, facts.rels_BxK.tolist()))


def test_probe_bridges_are_the_first_hops_tail():
  task = data.make_task(SMALL)
  atomic, _ = graph()
  for name in systematicity.TWO_HOP:
    ex = task.probes[name]
    h, r, _ = decode(task, ex)
    assert [atomic[a, b[0]] for a, b in zip(h, r)] == list(ex["bridge"] - task.vocab.entity_offset)
  assert "bridge" not in task.probes["id_atomic"] and "bridge" not in task.train


def test_stream_visits_every_row_once_per_epoch_in_a_new_order():
  task = data.make_task(SMALL)
  n = len(task.train["target"])
  rows = lambda ids: [tuple(r) for r in np.c_[task.train_examples(2, ids)["tokens"], task.train_examples(2, ids)["target"]]]
  every = sorted(rows(np.arange(n)))
  assert sorted(rows(np.arange(n))) == every == sorted(tuple(r) for r in np.c_[task.train["tokens"], task.train["target"]])
  assert sorted(rows(np.arange(n, 2 * n))) == every
  assert rows(np.arange(n)) != rows(np.arange(n, 2 * n))


def test_stream_resumes_from_the_iterator_state():
  task = data.make_task(SMALL)
  it = data.stage_iterator(task, 2, 16, 0, prefetch=0)
  for _ in range(7):
    next(it)
  state = it.get_state()
  expected = [next(it)["tokens"] for _ in range(5)]
  again = data.stage_iterator(task, 2, 16, 0, prefetch=0)
  again.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(again)["tokens"], want)


def test_official_folder_reads_back_as_the_generated_task(tmp_path):
  c = SMALL
  vocab, train_rows, test_rows, _ = composition_dataset(c.seed, c.n_entities, c.n_relations, c.out_degree, c.ood_ratio,
                                                     c.phi, c.n_probe)
  write_dataset(tmp_path, vocab, train_rows, test_rows)
  generated, read = data.make_task(c), data.make_task(C.override(c, [f"source={tmp_path}"]))
  key = lambda ex: sorted(map(tuple, np.c_[ex["tokens"], ex["target"]]))
  assert key(read.train) == key(generated.train)
  assert set(read.probes) == set(generated.probes)
  for name, ex in generated.probes.items():
    for k, v in ex.items():
      np.testing.assert_array_equal(read.probes[name][k], v, err_msg=f"{name}.{k}")


def test_folder_with_unknown_probe_type_is_one_line_error(tmp_path):
  vocab, train_rows, test_rows, _ = composition_dataset(0, 10, 3, 2, 0.2, 1.0, 20)
  write_dataset(tmp_path, vocab, train_rows, [{**test_rows[0], "type": "3hop_test"}])
  with pytest.raises(C.ConfigError, match="type '3hop_test'"):
    data.make_task(C.override(SMALL, [f"source={tmp_path}"]))


def test_ranks_match_brute_force():
  rng = np.random.default_rng(0)
  logits_2xBxV = rng.normal(size=(2, 5, 9)).astype(np.float32)
  logits_2xBxV[0, 0] = 0.0  # ties count in the target's favour
  target_B = rng.integers(9, size=5)
  got = np.asarray(lens.ranks(logits_2xBxV, target_B))
  want = [[1 + sum(x > row[t] for x in row) for row, t in zip(block, target_B)] for block in logits_2xBxV]
  np.testing.assert_array_equal(got, want)


def test_lens_matches_the_traced_layer_logits_and_the_accuracy():
  task = data.make_task(SMALL)
  model = LoopedTransformer(ModelConfig(d_model=32, n_heads=2, n_layers=2, pos_emb="learned", max_positions=4,
                                        init_std=0.5, embed_init_std=0.5), task.vocab.size)  # large weights: varied ranks untrained
  params = model.init(jax.random.PRNGKey(3), 3)
  mesh = sharding.make_mesh()
  splits = {s: task.probes[s] for s in ("train_inferred", "test_inferred_ood", "id_atomic")}
  got = lens.logit_lens(model, params, splits, 3, mesh, batch_size=64)  # several batches, the last one padded
  assert set(got) == {"train_inferred", "test_inferred_ood"}  # 1-hop probes have no bridge
  acc = evaluation.sweep(model, params, splits, 3, mesh, 64)
  for split, by_target in got.items():
    ex = splits[split]
    logits_RxLxBxV = np.asarray(model.trace(params, ex["tokens"], ex["read_pos"], 3, per_layer=True)["layer_logits"])
    r1 = np.asarray(model.trace(params, ex["tokens"], np.ones_like(ex["read_pos"]), 3, per_layer=True)["layer_logits"])
    for target, key, at in (("bridge", "bridge", logits_RxLxBxV), ("answer", "target", logits_RxLxBxV),
                            ("bridge_at_r1", "bridge", r1)):
      own_RxLxB = np.take_along_axis(at, ex[key][None, None, :, None], -1)
      rank_RxLxB = 1 + (at > own_RxLxB).sum(-1)
      np.testing.assert_allclose(by_target[target]["top1_by_layer"], (rank_RxLxB == 1).mean(-1), atol=1e-6)
      np.testing.assert_allclose(by_target[target]["mrr_by_layer"], (1 / rank_RxLxB).mean(-1), rtol=1e-5)
    a, b, b1 = by_target["answer"], by_target["bridge"], by_target["bridge_at_r1"]
    np.testing.assert_allclose(a["top1"], [acc[split][str(r)] for r in (1, 2, 3)], atol=1e-9)
    assert min(max(s["mrr"]) for s in (a, b, b1)) > 0.02 and b["mrr_by_layer"] != b1["mrr_by_layer"]
    for s in (a, b, b1):
      assert np.array(s["top1_by_layer"]).shape == (3, 2) and s["n_layers"] == 2
      np.testing.assert_allclose(np.array(s["top1_by_layer"])[:, -1], s["top1"])
      np.testing.assert_allclose(np.array(s["mrr_by_layer"])[:, -1], s["mrr"])
      assert all(t <= m <= 1 for t, m in zip(s["top1"], s["mrr"]))
      flat = np.ravel(s["top1_by_layer"])
      assert s["peak_top1"] == flat.max() and s["peak_layer"] == flat.argmax() + 1
      assert s["peak_loop"] == (s["peak_layer"] - 1) // 2 + 1


def test_stage_steps():
  curves = {"a": [[10, 0.2], [20, 0.95], [30, 0.85], [40, 0.99]], "b": [[10, 0.1]]}
  assert systematicity.stage_steps(curves) == {"a": 20, "b": None}


def test_paper_preset_matches_the_official_table():
  cfg = systematicity.paper()
  check_against_official(cfg, systematicity, "systematicity paper")
  t = cfg.train
  assert t.decay_steps >= t.steps and t.eval_every == 2450  # one epoch of the 313,600 rows
  assert cfg.models["vanilla"].n_layers == 16 and cfg.models["vanilla"].recurrence == "fixed:1"


@pytest.mark.parametrize("preset", ["smoke", "cpu", "cpu_long"])
def test_presets_validate_and_compare_equal_depth(preset):
  cfg = systematicity.PRESETS[preset]()
  systematicity.validate(cfg)
  looped, vanilla = cfg.models["looped"], cfg.models["vanilla"]
  depth = lambda run: run.n_layers * run.rec.max_loops
  assert depth(looped) == depth(vanilla) and vanilla.rec.loops == 1


def test_killed_run_resumes_with_the_same_curves(tmp_path):
  base = ["experiment", "systematicity", "--preset", "smoke"]
  straight = run_cli(*base, "--runs-dir", str(tmp_path / "a"))
  assert straight.returncode == 0, straight.stderr[-2000:]
  _, expected = results_of(straight)
  proc = subprocess.Popen([sys.executable, "-m", "looprec", *base, "--runs-dir", str(tmp_path / "b")], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  ckpt = tmp_path / "b" / "systematicity" / "latest" / "checkpoints" / "looped"
  deadline = time.time() + 180
  while not (ckpt.is_dir() and any(d.isdigit() for d in os.listdir(ckpt))):
    assert proc.poll() is None and time.time() < deadline, proc.communicate()
    time.sleep(0.1)
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  resumed = run_cli("experiment", "systematicity", "--resume", os.path.realpath(tmp_path / "b" / "systematicity" / "latest"))
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  _, got = results_of(resumed)
  assert got["curves"] == expected["curves"] and got["stages"] == expected["stages"]
  for name, m in expected["models"].items():
    assert got["models"][name]["params_sum"] == m["params_sum"] and got["models"][name]["final"] == m["final"]


BAD = [
    (["data.phi=100"], "phi=100.0 needs"),
    (["data.out_degree=9"], "data.out_degree=9 must be in 1..data.n_relations=4"),
    (["data.ood_ratio=1.5"], "data.ood_ratio=1.5"),
    (["data.curriculum.last_hop=3"], "unknown config key 'data.curriculum.last_hop'"),
    (["model.max_positions=2"], "model.max_positions=2 < 3"),
    (["eval.max_loops=1"], "eval.max_loops=1 is below models.looped"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_input_one_line_error_and_nothing_written(tmp_path, args, message):
  proc = run_cli("experiment", "systematicity", "--preset", "smoke", *args, "--runs-dir", str(tmp_path))
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
  assert message in lines[0], lines[0]
  assert not os.listdir(tmp_path)


def test_empty_probe_split_is_a_one_line_error():
  with pytest.raises(ConfigError, match="probe split 'test_inferred_ood' is empty: the graph is too small"):
    data.make_task(CompositionDataConfig(n_entities=12, n_relations=3, out_degree=2, phi=1.0, n_probe=32))


@pytest.mark.parametrize("case", ["reached", "never, all zeros"])
def test_report_sentence_reads_right_in_every_branch(case):
  from experiments.systematicity import summary
  reached = case == "reached"
  stages = {s: (250 if reached else None) for s in ("train_inferred", "test_inferred_iid", "test_inferred_ood")}
  read = lambda top1: {"top1": [top1] * 2, "n_layers": 2, "peak_top1": top1, "peak_layer": 3}
  lenses = {"test_inferred_iid": {k: read(0.5 if reached else 0.0) for k in ("answer", "bridge", "bridge_at_r1")}}
  text = summary(stages, {"test_inferred_ood": 0.0}, lenses)
  if reached:
    assert text.startswith("accuracy >= 0.9: training 2-hop facts at step 250, ID test at step 250, OOD test at step 250")
    assert "the answer's top-1 rate peaks at 0.50 after layer 3 of 4," in text
  else:
    assert text.startswith("accuracy >= 0.9: training 2-hop facts never, ID test never, OOD test never (final OOD 0.00")
    assert "at never" not in text and "peaks at 0.00" not in text and "is 0 after every layer (never top-1)" in text
