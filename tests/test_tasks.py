"""The task registry: the paper's graph tasks registered with unchanged data, parity, p-hop induction, copy and
addition checked against brute-force references, their bad input refused naming the field, a sequence answer read,
scored and halted slot by slot as the one-token reading does, and a task added in one file (a temporary module)
that trains, sweeps and halts through the library as it is."""
import dataclasses

import jax
import numpy as np
import pytest

from conftest import temporary_module
from looprec import analysis, data, eval as evaluation, halting, models, sharding, tasks, train
from looprec.config import ChainDataConfig, CompositionDataConfig, ConfigError, ModelConfig, Recurrence, TrainConfig
from looprec.tasks import TaskConfig, addition, p_hop


def test_the_graph_tasks_are_registered_and_build_as_before():
  chain_cfg = ChainDataConfig(n_entities=8, n_relations=2, seq_len=6, n_eval=16)
  task = tasks.make_task(chain_cfg)
  assert type(task) is data.ChainTask and tasks.entry_of(chain_cfg)[0] == "chains"
  before = data.make_task(chain_cfg)
  for got, want in ((task.train_examples(3, np.arange(8), 3), before.train_examples(3, np.arange(8), 3)),
                    (task.eval_split(2), before.eval_split(2))):
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
  assert task.train_width == data.width(chain_cfg.curriculum.last_hop, "last_input")
  comp = CompositionDataConfig(n_entities=20, n_relations=4, out_degree=3, phi=1.0, n_probe=8)
  assert tasks.entry_of(comp)[0] == "composition" and type(tasks.make_task(comp)) is data.CompositionTask
  assert {"chains", "composition", "parity", "p_hop", "copy", "addition"} <= set(tasks.TASKS)


def test_parity_answers_the_parity_of_the_bits_and_labels_its_splits():
  task = tasks.make_task(TaskConfig(name="parity", train_min=2, train_max=5, ood="8,10", seq_len=11, n_eval=32))
  batch = task.train_examples(5, np.arange(64))
  assert batch["tokens"].shape == (64, 6) and set(batch["hop"]) == {2, 3, 4, 5}
  for tokens, pos, target, d in zip(batch["tokens"], batch["read_pos"], batch["target"], batch["hop"]):
    assert pos == d and tokens[pos] == 3 and not tokens[pos + 1:].any()  # `=` after d bits, then pads
    assert target == 1 + int((tokens[:d] == 2).sum()) % 2
  again = task.train_examples(5, np.arange(64))  # a pure function of the ids: the stream resumes exactly
  assert all(np.array_equal(batch[k], again[k]) for k in batch)
  assert not np.array_equal(batch["tokens"][:8], task.train_examples(5, np.arange(64, 128))["tokens"][:8])
  assert [(s.name, s.difficulty, s.ood) for s in task.splits()] == [
      ("2hop_test", 2, False), ("3hop_test", 3, False), ("4hop_test", 4, False), ("5hop_test", 5, False),
      ("8hop_test", 8, True), ("10hop_test", 10, True)]
  test, val = task.eval_split(10), task.val_split(10)
  assert test["tokens"].shape == (32, 11) and set(test["n_answers"]) == {2}
  assert not np.array_equal(test["tokens"], val["tokens"])
  assert set(task.monitor_splits(5)) == {"2hop_test", "3hop_test", "4hop_test", "5hop_test"}
  assert set(task.labelled()) == {s.name for s in task.splits()} | {f"{d}hop_val" for d in (2, 3, 4, 5, 8, 10)}


def test_running_parity_supervises_the_parity_so_far_at_every_bit_and_leaves_the_rest_as_it_was():
  cfg = TaskConfig(name="parity", train_min=2, train_max=5, ood="8", seq_len=9, n_eval=16)
  plain = tasks.make_task(cfg).train_examples(5, np.arange(64))
  running = tasks.make_task(dataclasses.replace(cfg, running_parity=True)).train_examples(5, np.arange(64))
  assert "targets" not in plain and all(np.array_equal(plain[k], running[k]) for k in plain)
  for tokens, targets, target, d in zip(running["tokens"], running["targets"], running["target"], running["hop"]):
    ones = np.cumsum(tokens[:d] == 2)
    assert targets[:d].tolist() == (1 + ones % 2).tolist() and targets[d] == target == 1 + ones[-1] % 2
    assert not targets[d + 1:].any()  # pads unsupervised


def reference_hop(v: list, p: int, none: int) -> int:
  """hop_p by its definition: p times, i <- 1 + the last j < i with v[j] == v[i]."""
  i = len(v) - 1
  for _ in range(p):
    before = [j for j in range(i) if v[j] == v[i]]
    if not before:
      return none
    i = before[-1] + 1
  return v[i]


def test_p_hop_matches_the_definition():
  rng = np.random.default_rng(0)
  v_BxN = rng.integers(0, 3, (200, 12))
  p_B = rng.integers(1, 7, 200)
  got = p_hop.hop_targets(v_BxN, p_B, 3)
  assert got.tolist() == [reference_hop(list(v), int(p), 3) for v, p in zip(v_BxN, p_B)]
  assert 0 < (got == 3).sum() < 200  # both kinds of answer occur
  task = tasks.make_task(TaskConfig(name="p_hop", train_max=3, ood="6", seq_len=22, context=16, n_eval=16))
  batch = task.train_examples(3, np.arange(32))
  assert batch["tokens"].shape == batch["targets"].shape == (32, 19)
  assert np.array_equal(batch["read_pos"], 16 + batch["hop"] - 1)
  for tokens, target, targets, p in zip(batch["tokens"], batch["target"], batch["targets"], batch["hop"]):
    assert list(tokens[:p]) == [task.vocab.size - 1] * p and not tokens[p + 16:].any()
    v = list(tokens[p:p + 16] - 1)
    assert target == 1 + reference_hop(v, int(p), 4)
    assert [t - 1 for t in targets[p:p + 16]] == [reference_hop(v[:i + 1], int(p), 4) for i in range(16)]
    assert not targets[:p].any() and not targets[p + 16:].any()  # markers and pads: no answer
  answer_only = tasks.make_task(dataclasses.replace(task.cfg, every_position=False)).train_examples(3, np.arange(32))
  assert "targets" not in answer_only and np.array_equal(answer_only["tokens"], batch["tokens"])
  assert task.eval_split(6)["tokens"].shape == (16, 22) and set(task.eval_split(6)["n_answers"]) == {5}


def bits_value(tokens) -> int:
  """The number a row of bit tokens (1 + bit, most significant first) writes."""
  return int("".join(str(t - 1) for t in tokens) or "0", 2)


def check_sequence_rows(batch: dict, answer_length):
  """Each row's answer slots: consecutive from read_pos[:, 0], padding slots repeating the last with target 0, and
  `targets` holding exactly the real slots' answers."""
  for pos, target, targets, d in zip(batch["read_pos"], batch["target"], batch["targets"], batch["hop"]):
    k = answer_length(d)
    assert list(pos[:k]) == list(range(pos[0], pos[0] + k)) and set(pos[k:]) <= {pos[k - 1]}
    assert target[:k].all() and not target[k:].any()
    assert list(np.nonzero(targets)[0]) == list(pos[:k]) and list(targets[pos[:k]]) == list(target[:k])


def test_copy_answers_its_string_from_the_query_on():
  task = tasks.make_task(TaskConfig(name="copy", train_min=1, train_max=5, ood="8", seq_len=16, n_eval=16))
  batch = task.train_examples(5, np.arange(64))
  assert batch["tokens"].shape == (64, 10) and batch["read_pos"].shape == (64, 5)
  assert set(batch["hop"]) == set(range(1, 6))
  check_sequence_rows(batch, lambda n: n)
  for tokens, pos, target, n in zip(batch["tokens"], batch["read_pos"], batch["target"], batch["hop"]):
    assert set(tokens[:n]) <= {1, 2} and tokens[n] == 3 and list(tokens[n + 1:2 * n]) == [4] * (n - 1)
    assert not tokens[2 * n:].any() and pos[0] == n and list(target[:n]) == list(tokens[:n])
  test = task.eval_split(8)
  assert test["read_pos"].shape == (16, 8) and test["tokens"].shape == (16, 16) and test["target"].all()


def test_addition_answers_the_sum_of_its_operands():
  assert addition.binary_sum(np.array([[1, 1, 1]]), np.array([[0, 0, 1]])).tolist() == [[1, 0, 0, 0]]
  task = tasks.make_task(TaskConfig(name="addition", train_min=1, train_max=6, ood="9,12", seq_len=38, n_eval=16))
  batch = task.train_examples(6, np.arange(128))
  assert batch["tokens"].shape == (128, 20) and batch["read_pos"].shape == (128, 7)
  check_sequence_rows(batch, lambda n: n + 1)
  for tokens, pos, target, n in zip(batch["tokens"], batch["read_pos"], batch["target"], batch["hop"]):
    a, b = tokens[:n], tokens[n + 1:2 * n + 1]
    assert tokens[n] == 3 and tokens[2 * n + 1] == 4 and list(tokens[2 * n + 2:3 * n + 2]) == [5] * n
    assert not tokens[3 * n + 2:].any() and pos[0] == 2 * n + 1 and set(a) | set(b) <= {1, 2}
    assert bits_value(target[:n + 1]) == bits_value(a) + bits_value(b)
  assert (batch["target"][:, 0] == 2).any() and (batch["target"][:, 0] == 1).any()  # with and without a carry out
  test = task.eval_split(12)
  assert test["read_pos"].shape == (16, 13) and test["tokens"].shape == (16, 38)


@pytest.fixture(scope="module")
def copy_model():
  """An untrained model on copy (lengths 1..3; test split at 5), its params and a mesh."""
  task = tasks.make_task(TaskConfig(name="copy", train_max=3, ood="5", seq_len=10, n_eval=24))
  model = models.build(ModelConfig(d_model=16, n_heads=2, n_layers=1), task.vocab.size)
  return task, model, model.init(jax.random.PRNGKey(0), 10), sharding.make_mesh()


def test_a_sequence_answer_is_right_only_if_every_slot_is(copy_model):
  """Margins, hits and the sweep's accuracy of a sequence answer: the worst slot's margin, all slots' hits, each
  slot read as a one-token answer would be; the training loss's accuracy is the same (padding slots count right)."""
  task, model, params, mesh = copy_model
  split = task.eval_split(5)
  logits_BxTxV = model.apply(params, split["tokens"], 3)
  margin_RxB, hit_RxB = evaluation.logit_margins(model.loop_logits(params, split["tokens"], split["read_pos"], 3),
                                                  split["target"])
  slots = [evaluation.logit_margins(models.gather_positions(logits_BxTxV, split["read_pos"][:, k])[None],
                                    split["target"][:, k]) for k in range(5)]
  np.testing.assert_allclose(margin_RxB[-1], np.min([m[0] for m, _ in slots], 0), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(hit_RxB[-1], np.all([h[0] for _, h in slots], 0))
  right_B = (np.argmax(logits_BxTxV, -1)[np.arange(24)[:, None], split["read_pos"]] == split["target"]).all(1)
  assert evaluation.sweep(model, params, {"5hop_test": split}, 3, mesh)["5hop_test"]["3"] == right_B.mean()
  batch = task.train_examples(3, np.arange(24))
  logits_BxTxV = model.apply(params, batch["tokens"], 3)
  answer_BxK = np.argmax(logits_BxTxV, -1)[np.arange(24)[:, None], batch["read_pos"]]
  want = np.mean([(a[t > 0] == t[t > 0]).all() for a, t in zip(answer_BxK, batch["target"])])
  assert float(model.loss(params, batch, 3)[1]) == pytest.approx(want)


def test_a_sequence_answer_halts_where_every_slot_is_settled(copy_model):
  """entropy and argmax policies on a sequence answer stop at the first loop where every slot passes (brute force
  over the per-loop logits), and keep all slots' answers there."""
  task, model, params, mesh = copy_model
  split = task.eval_split(5)
  logits_RxBxKxV = np.asarray(model.loop_logits(params, split["tokens"], split["read_pos"], 6), np.float64)
  p_RxBxKxV = np.exp(logits_RxBxKxV - logits_RxBxKxV.max(-1, keepdims=True))
  p_RxBxKxV /= p_RxBxKxV.sum(-1, keepdims=True)
  entropy_RxBxK = -(p_RxBxKxV * np.log(p_RxBxKxV)).sum(-1)
  answer_RxBxK = logits_RxBxKxV.argmax(-1)
  bound = float(np.median(entropy_RxBxK.max(2)))
  same_RxB = np.concatenate([np.zeros((1, 24), bool), (answer_RxBxK[1:] == answer_RxBxK[:-1]).all(2)])
  settled_RxB = {f"entropy:max_entropy={bound}": (entropy_RxBxK < bound).all(2), "argmax:n=1": same_RxB}
  for spec, stop_RxB in settled_RxB.items():
    got = halting.halt_examples(model, params, split, halting.parse_policy(spec), 6, mesh)
    want_B = np.where(stop_RxB.any(0), stop_RxB.argmax(0) + 1, 6)
    assert got["answer"].shape == (24, 5) and (spec.startswith("argmax") or 1 < len(set(want_B))), spec
    np.testing.assert_array_equal(got["loops"], want_B)
    np.testing.assert_array_equal(got["answer"], answer_RxBxK[want_B - 1, np.arange(24)])


@pytest.mark.parametrize("cfg, message", [
    (TaskConfig(name="sorting"), "data.name='sorting' is not a registered task"),
    (TaskConfig(train_max=8, ood="4,16"), "data.ood='4,16': difficulty 4 is inside the training range"),
    (TaskConfig(train_max=8, ood="8"), "data.ood='8': difficulty 8 is inside the training range"),
    (TaskConfig(train_max=8, seq_len=20), "data.seq_len=20 holds difficulties up to 19 for data.name=parity, not 24"),
    (TaskConfig(name="p_hop", train_max=4, context=32, seq_len=40), "data.seq_len=40 holds difficulties up to 8"),
    (TaskConfig(ood="x"), "data.ood='x' is not a comma-separated list of integers"),
    (TaskConfig(train_min=5, train_max=4), "data.train_min=5 and data.train_max=4 need 1 <= min <= max"),
    (TaskConfig(train_min=2, curriculum_from=1), "data.curriculum_from=1 must be 0 (none) or within data.train_min"),
    (TaskConfig(curriculum_from=9), "data.curriculum_from=9 must be 0 (none) or within data.train_min"),
    (TaskConfig(curriculum_from=4, curriculum_threshold=1.0), "data.curriculum_threshold=1.0 must be < 1"),
    (TaskConfig(name="copy", running_parity=True, seq_len=40), "data.running_parity=true is read by data.name=parity "
                                                               "only, not copy"),
])
def test_bad_task_input_is_one_error_naming_the_field(cfg, message):
  with pytest.raises(ConfigError) as e:
    tasks.make_task(cfg)
  assert str(e.value).startswith(message) and "\n" not in str(e.value)


TOY = """
import numpy as np
from looprec.tasks import DifficultyTask, SimpleVocab, register_task

@register_task("last_bit", difficulty="length")
class LastBit(DifficultyTask):
  vocab = SimpleVocab(("<pad>", "0", "1", "="))
  n_answers = 2

  @staticmethod
  def capacity(cfg):
    return cfg.seq_len - 1

  @staticmethod
  def width(d):
    return d + 1

  @staticmethod
  def examples(rng, d_B):
    bits = rng.integers(0, 2, (len(d_B), int(max(d_B))))
    tokens = np.concatenate([1 + bits, np.zeros((len(d_B), 1), int)], 1) * (np.arange(max(d_B) + 1) <= d_B[:, None])
    tokens[np.arange(len(d_B)), d_B] = 3
    return {"tokens": tokens.astype(np.int32), "read_pos": np.asarray(d_B, np.int32),
            "target": tokens[np.arange(len(d_B)), d_B - 1].astype(np.int32), "hop": np.asarray(d_B, np.int32)}
"""


@pytest.fixture
def toy(tmp_path, monkeypatch):
  """Task `last_bit`, one file in a temporary folder (importing it registers it); unregistered after."""
  with temporary_module(tmp_path, monkeypatch, "last_bit_task", TOY, tasks.TASKS, "last_bit") as module:
    yield module


def test_a_task_in_one_file_trains_sweeps_and_halts(toy, tmp_path):
  cfg = TaskConfig(name="last_bit", train_max=3, ood="6", seq_len=8, n_eval=16)
  task = tasks.make_task(cfg)
  assert isinstance(task, toy.LastBit) and tasks.TASKS["last_bit"].difficulty == "length"
  with pytest.raises(ConfigError, match="data.ood='2'"):
    tasks.make_task(TaskConfig(name="last_bit", train_max=3, ood="2"))
  model = models.build(ModelConfig(d_model=16, n_heads=2), task.vocab.size)
  mesh = sharding.make_mesh()
  result = train.train_model("toy", model, Recurrence.parse("fixed:2"), 6,
                             TrainConfig(batch_size=8, warmup_steps=1, eval_every=3, checkpoint_every=6, log_every=3),
                             task, mesh, str(tmp_path / "run"), 0, {})
  assert result.steps == 6 and set(result.curves) == {"atomic", "2hop_test", "3hop_test"}
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(result.params))
  splits = task.labelled()
  out = analysis.analyze_model(model, result.params, splits, 3, ["kl_entropy"], halt_loops=4, margin_loops=3,
                               mesh=mesh, batch_size=8)
  assert set(out["sweep"]) == set(splits) and all(len(by_r) == 4 for by_r in out["sweep"].values())
  assert set(out["margins"]) == set(splits)


def test_a_length_curriculum_starts_short_and_adds_a_difficulty_at_each_pass(tmp_path):
  """data.curriculum_from: stage s trains on lengths train_min..s (padded to train_max: one shape), and the trainer
  moves to s + 1 when length s passes data.curriculum_threshold (-1 here: every check passes)."""
  cfg = TaskConfig(name="parity", train_max=5, ood="8", seq_len=9, n_eval=16, curriculum_from=2,
                   curriculum_threshold=-1.0)
  task = tasks.make_task(cfg)
  assert (task.curriculum.first, task.curriculum.last) == (2, 5)
  for stage in (2, 3, 5):
    batch = task.train_examples(stage, np.arange(256))
    assert set(batch["hop"]) == set(range(1, stage + 1)) and batch["tokens"].shape == (256, 6)
  model = models.build(ModelConfig(d_model=16, n_heads=2, pos_emb="none"), task.vocab.size)
  result = train.train_model("parity", model, Recurrence.parse("difficulty:5"), 12,
                             TrainConfig(batch_size=8, warmup_steps=1, eval_every=3, checkpoint_every=12,
                                         log_every=3, restart_optimizer=False),
                             task, sharding.make_mesh(), str(tmp_path / "run"), 0, {})
  assert result.stages == [[0, 2], [3, 3], [6, 4], [9, 5]] and result.trained_max_hop == 5
  without = tasks.make_task(dataclasses.replace(cfg, curriculum_from=0))
  assert (without.curriculum.first, without.curriculum.last) == (5, 5)


@pytest.mark.parametrize("kind, recurrence", [("looped", "difficulty:3"), ("exit_gate", "fixed:3")])
def test_a_sequence_task_trains_sweeps_and_halts(kind, recurrence, tmp_path):
  """Addition through training (monitor splits scored by exact match), the sweep, every halting policy that applies
  (the exit gate's too) and the margins."""
  task = tasks.make_task(TaskConfig(name="addition", train_max=3, ood="5", seq_len=17, n_eval=16))
  model = models.build(ModelConfig(d_model=16, n_heads=2, kind=kind), task.vocab.size)
  mesh = sharding.make_mesh()
  cfg = TrainConfig(batch_size=8, warmup_steps=1, eval_every=3, checkpoint_every=6, log_every=3)
  result = train.train_model("add", model, Recurrence.parse(recurrence), 6, cfg, task, mesh,
                             str(tmp_path / "run"), 0, {})
  assert result.steps == 6 and set(result.curves) == {"atomic", "2hop_test", "3hop_test"}
  assert all(0 <= acc <= 1 for curve in result.curves.values() for _, acc in curve)
  splits = task.labelled()
  out = analysis.analyze_model(model, result.params, splits, 5, halt_loops=5, margin_loops=5, mesh=mesh,
                               batch_size=8)
  assert {spec.partition(":")[0] for spec in out["halting"]} == set(halting.applicable(model))
  assert any(spec.startswith("gate") for spec in out["halting"]) == (kind == "exit_gate")
  for table in out["halting"].values():
    assert all(1 <= row["mean_loops"] <= 5 and 0 <= row["accuracy"] <= 1 for row in table.values())
  assert set(out["margins"]) == set(splits) and all(len(m["margin"]) == 5 for m in out["margins"].values())
