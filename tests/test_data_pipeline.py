"""The looprec data pipeline over generated chains: encoding, curriculum mixture, held-out exclusion, resume."""
import numpy as np
import pytest

from data_gen import chains
from experiments import depth_extrap
from looprec import data
from looprec.config import ChainDataConfig, ConfigError, CurriculumConfig


def task(**kw):
  return data.make_task(ChainDataConfig(**{"n_entities": 12, "n_relations": 3, "seq_len": 10, **kw}))


def decode(t, ex):
  """(head, rels, tail) tuples of encoded examples."""
  v = t.vocab
  out = []
  for toks, hop, target in zip(ex["tokens"], ex["hop"], ex["target"]):
    out.append((int(toks[0] - v.entity_offset), tuple(int(r - v.relation_offset) for r in toks[1:1 + hop]),
                int(target - v.entity_offset)))
  return out


def test_examples_are_correct_chains():
  t = task()
  ex = t.train_examples(4, np.arange(500))
  for head, rels, tail in decode(t, ex):
    e = head
    for r in rels:
      e = int(t.perms_MxN[r, e])
    assert e == tail
  assert set(ex["hop"].tolist()) == {1, 2, 3, 4}
  assert (ex["read_pos"] == ex["hop"]).all()  # last input token
  assert ex["tokens"].shape == (500, 5) and (ex["tokens"][ex["hop"] < 4, -1] == 0).all()  # right-padded


def test_answer_at_next_reads_a_pad_after_the_input():
  t = task(answer_at="next")
  ex = t.eval_split(3)
  assert (ex["read_pos"] == 4).all() and (ex["tokens"][:, 4] == 0).all()


@pytest.mark.parametrize("pool", [0, 50])
def test_held_out_chains_never_trained(pool):
  t = task(train_chains_per_hop=pool, test_fraction=0.2)
  train = set(decode(t, t.train_examples(4, np.arange(20_000))))
  for hop in (2, 3, 4):
    held = set(decode(t, t.eval_split(hop)))
    assert held and not held & train
  assert len({x for x in train if len(x[1]) == 2}) <= (pool or 10**9)


def test_validation_chains_are_the_next_held_out_ones_topped_up_with_training_chains():
  n = 20
  t = task(n_eval=n, test_fraction=0.2)
  for hop in (1, 2, 3, 4, 5):
    test, val = decode(t, t.eval_split(hop)), decode(t, t.val_split(hop))
    pool = list(zip(*chains.held_out_chains(0, 12, 3, hop, 10**6, 0.2)))
    held = [(int(h), tuple(map(int, r))) for h, r in pool]
    assert [x[:2] for x in test] == held[:n]  # the test split is the first n held-out chains, as before
    assert len(val) == n and len(set(val)) == n
    if hop == 1:  # 36 atomic facts: the 16 after the test sample, then the others in id order
      others = [(h, (r,)) for h in range(12) for r in range(3) if (h, (r,)) not in held[n:]]
      assert [x[:2] for x in val] == held[n:] + others[:n - len(held[n:])]
      continue
    assert [x[:2] for x in val[:len(held[n:2 * n])]] == held[n:2 * n] and not set(test) & set(val)
    rest = val[len(held[n:2 * n]):]
    assert not chains.is_held_out(0, [h for h, _, _ in rest], [r for _, r, _ in rest], 0.2).reshape(-1).any() \
        if rest else len(held) >= 2 * n


def test_stage_never_trains_deeper_hops():
  t = task()
  ds = data.stage_dataset(t, 2, 16, start_step=0)
  assert max(int(ds[i]["hop"].max()) for i in range(50)) == 2


def test_same_seed_same_stream_and_exact_resume():
  t1, t2 = task(seed=3), task(seed=3)
  it = data.stage_iterator(t1, 3, 8, start_step=5)
  first = [next(it) for _ in range(3)]
  state = it.get_state()
  after = [next(it) for _ in range(2)]
  it2 = data.stage_iterator(t2, 3, 8, start_step=5)
  it2.set_state(state)
  for a, b in zip(after, [next(it2) for _ in range(2)]):
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
  other = data.stage_iterator(task(seed=4), 3, 8, start_step=5)
  assert not np.array_equal(next(other)["tokens"], first[0]["tokens"])


def test_pool_holds_distinct_chains_and_every_atomic_fact_is_trained():
  t = task(train_chains_per_hop=30)
  ex = decode(t, t.train_examples(3, np.arange(5000)))
  assert len({x for x in ex if len(x[1]) == 2}) == 30 and len({x for x in ex if len(x[1]) == 3}) == 30
  assert len({x for x in ex if len(x[1]) == 1}) == 12 * 3  # all atomic facts, not a pool of them


def test_pool_weights_follow_pool_sizes():
  t = task(hop_weights="pool", train_chains_per_hop=36)
  w = t.hop_weights(3)
  assert np.allclose(w, np.array([36, 36, 36]) / 108)


def test_too_deep_for_seq_len():
  with pytest.raises(ConfigError, match="seq_len"):
    task(seq_len=5).eval_split(5)


def test_json_folder_source(tmp_path):
  """The pipeline reads an official-format folder written by the data_gen CLI."""
  from data_gen import io
  from data_gen.vocab import Vocab
  vocab = Vocab.standard(12, 3)
  perms = chains.permutation_graph(0, 12, 3)
  train_rows, test_rows = [], []
  for hop in (1, 2, 3):
    h, r = chains.train_chains(0, 12, 3, hop, np.arange(40), 0.2)
    train_rows += io.facts_to_rows(vocab, io.Facts(h, r, chains.follow(perms, h, r)))
  for hop in (2, 3, 4):
    h, r = chains.held_out_chains(0, 12, 3, hop, 20, 0.2)
    test_rows += io.facts_to_rows(vocab, io.Facts(h, r, chains.follow(perms, h, r)), f"{hop}hop_test")
  io.write_dataset(str(tmp_path / "ds"), vocab, train_rows, test_rows)
  with pytest.raises(ConfigError, match="data.curriculum.last_hop=4 exceeds the data's deepest chain"):
    task(source=str(tmp_path / "ds"))
  t = task(source=str(tmp_path / "ds"), curriculum=CurriculumConfig(last_hop=3))
  assert t.deepest_train_hop == 3
  ex = t.train_examples(2, np.arange(100))
  assert ex["hop"].max() == 2
  for head, rels, tail in decode(t, ex):
    assert tail == int(chains.follow(perms, [head], [rels])[0])
  assert len(t.eval_split(4)["hop"]) == 20
  assert len(t.val_split(4)["hop"]) == 0  # no test rows after the first n_eval, no 4-hop training rows
  assert set(depth_extrap.eval_splits(t, 4)) == {"atomic", "2hop_test", "3hop_test", "4hop_test", "atomic_val",
                                                 "2hop_val", "3hop_val"}  # the empty one left out
  small = task(source=str(tmp_path / "ds"), curriculum=CurriculumConfig(last_hop=3), n_eval=8)
  val, test = decode(small, small.val_split(3)), decode(small, small.eval_split(3))
  assert val == decode(small, data.take(small.test["3hop_test"], slice(8, 16))) and not set(val) & set(test)
  assert len(decode(small, small.val_split(1))) == 8  # atomic: no atomic test rows, training rows 8..15


def test_missing_json_folder():
  with pytest.raises(ConfigError, match="does not exist"):
    task(source="/nonexistent/folder")
