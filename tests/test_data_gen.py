"""Tests of data_gen: task B chains, task A composition, the official JSON format and the CLI."""
import collections
import itertools
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from data_gen import (SPLITS, Facts, Vocab, chain_space, facts_to_rows, follow, held_out_chains, is_held_out,
                      make_composition, permutation_graph, read_dataset, rows_to_facts, train_chains,
                      write_dataset)
from data_gen.__main__ import main
from data_gen import chains
from data_gen.chains import distinct_train_chains, hash_columns

REPO = pathlib.Path(__file__).resolve().parents[1]


def chain_set(heads, rels):
  return {(int(h), *map(int, r)) for h, r in zip(heads, rels)}


def graph_dict(perms_MxN):
  return {(h, r): int(perms_MxN[r, h]) for r in range(perms_MxN.shape[0]) for h in range(perms_MxN.shape[1])}


def walk(graph, head, rels):
  e = int(head)
  for r in rels:
    e = graph[(e, int(r))]
  return e


# ---------------------------------------------------------------- task B


def test_permutation_graph_and_tails_match_brute_force():
  perms = permutation_graph(3, 30, 5)
  for row in perms:
    assert sorted(row.tolist()) == list(range(30))
  graph = graph_dict(perms)
  for hop in (1, 2, 3, 7):
    for heads, rels in (train_chains(3, 30, 5, hop, np.arange(200), 0.1),
                        held_out_chains(3, 30, 5, hop, 50, 0.1)):
      tails = follow(perms, heads, rels)
      assert tails.tolist() == [walk(graph, h, r) for h, r in zip(heads, rels)]


@pytest.mark.parametrize("hop", [2, 3, 4])
def test_train_and_held_out_disjoint_enumerated(hop):
  n, m, frac = 20, 4, 0.1
  every = [(h, *rs) for h in range(n) for rs in itertools.product(range(m), repeat=hop)]
  every_B = np.array(every)
  mask = is_held_out(0, every_B[:, 0], every_B[:, 1:], frac)
  held = chain_set(every_B[mask, 0], every_B[mask, 1:])
  assert 0 < len(held) < len(every)
  train = chain_set(*train_chains(0, n, m, hop, np.arange(4 * len(every)), frac))
  assert not train & held
  assert len(train) > 0.95 * (len(every) - len(held))  # many draws reach (nearly) all the training class
  h, r = held_out_chains(0, n, m, hop, 10**6, frac)
  assert len(h) == len(held) and chain_set(h, r) == held  # all of them, each once


@pytest.mark.parametrize("hop", [8, 20])
def test_train_and_held_out_disjoint_sampled(hop):
  n, m, frac = 200, 10, 0.05
  assert chain_space(n, m, hop) > 1 << 21
  th, tr = train_chains(5, n, m, hop, np.arange(5000), frac)
  hh, hr = held_out_chains(5, n, m, hop, 300, frac)
  assert len(chain_set(hh, hr)) == len(hh) == 300
  assert not is_held_out(5, th, tr, frac).any() and is_held_out(5, hh, hr, frac).all()
  assert not chain_set(th, tr) & chain_set(hh, hr)


def test_chains_deterministic_in_seed():
  def data(seed):
    return (permutation_graph(seed, 50, 6), *train_chains(seed, 50, 6, 5, np.arange(100), 0.05),
            *held_out_chains(seed, 50, 6, 5, 40, 0.05), *held_out_chains(seed, 50, 6, 2, 40, 0.05))
  a, b, c = data(1), data(1), data(2)
  assert all(np.array_equal(x, y) for x, y in zip(a, b))
  assert all(not np.array_equal(x, z) for x, z in zip(a, c))


@pytest.mark.parametrize("hop", [2, 5])
def test_chain_draws_are_the_per_column_hashes(hop):
  """`_draw` hashes the shared prefix once and the hop + 1 columns in one array: the values of hashing each
  column's full row (seed ^ salt, hop, id, attempt, j), as chains were drawn before (golden streams unchanged)."""
  ids_B = np.arange(1000, 1300)
  full = lambda v: np.full(ids_B.shape, v)
  for seed, attempt in [(0, 0), (7, 3), (-5, 255)]:
    cols = [hash_columns(seed ^ 0x7261696E, full(hop), ids_B, full(attempt), full(j)) for j in range(hop + 1)]
    heads, rels = chains._draw(seed, 0x7261696E, 50, 6, hop, ids_B, attempt)
    np.testing.assert_array_equal(heads, cols[0] % np.uint64(50))
    np.testing.assert_array_equal(rels, np.stack(cols[1:], 1) % np.uint64(6))
  np.testing.assert_array_equal(hash_columns(3, full(hop), ids_B), hash_columns(3, hop, ids_B))


def test_hop_one_never_held_out():
  heads, rels = train_chains(0, 30, 7, 1, np.arange(30 * 7), 0.5)
  assert chain_set(heads, rels) == {(h, r) for h in range(30) for r in range(7)}
  assert not is_held_out(0, heads, rels, 0.9).any()


def test_distinct_train_chains():
  heads, rels = distinct_train_chains(0, 20, 4, 2, 250, 0.05)
  assert len(chain_set(heads, rels)) == 250 and not is_held_out(0, heads, rels, 0.05).any()
  with pytest.raises(ValueError, match="distinct training 2-hop chains"):
    distinct_train_chains(0, 20, 4, 2, 320, 0.05)


# ---------------------------------------------------------------- task A

SMALL = dict(n_entities=60, n_relations=12, out_degree=4, ood_ratio=0.2, phi=1.5, n_probe=40, iid_test_prob=0.1)


def brute_force_paths(data):
  """Every 2-hop path from the atomic facts by dict walking: {(h, r1, r2): (bridge, tail, ood1, ood2)}."""
  out = collections.defaultdict(list)
  for name in ("id_atomic", "ood_atomic"):
    f = data.splits[name]
    for h, (r,), t in zip(f.heads_B.tolist(), f.rels_BxK.tolist(), f.tails_B.tolist()):
      out[h].append((r, t, name == "ood_atomic"))
  paths = {}
  for h, edges in out.items():
    for r1, b, o1 in edges:
      for r2, t, o2 in out[b]:
        paths[(h, r1, r2)] = (b, t, o1, o2)
  return out, paths


def rows_of(f):
  return [(h, *r, b, t) for h, r, b, t in zip(f.heads_B.tolist(), f.rels_BxK.tolist(), f.bridges_B.tolist(),
                                             f.tails_B.tolist())]


def test_composition_graph():
  data = make_composition(1, **SMALL)
  out, _ = brute_force_paths(data)
  assert sorted(out) == list(range(60))
  for edges in out.values():
    assert len(edges) == 4 and len({r for r, _, _ in edges}) == 4
  assert len(data.splits["ood_atomic"]) == round(0.2 * 240) and len(data.splits["id_atomic"]) == 240 - 48


def test_inferred_facts_match_brute_force_and_split_rules():
  data = make_composition(1, **SMALL)
  _, paths = brute_force_paths(data)
  got = {}
  for name in SPLITS[2:]:
    for h, r1, r2, b, t in rows_of(data.splits[name]):
      assert paths[(h, r1, r2)][:2] == (b, t)
      assert (h, r1, r2) not in got
      got[(h, r1, r2)] = name
  kinds = {(False, False): {"train_inferred", "test_inferred_iid"}, (True, True): {"test_inferred_ood"},
           (True, False): {"test_inferred_ood_first"}, (False, True): {"test_inferred_ood_second"}}
  for key, (_, _, o1, o2) in paths.items():
    if (o1, o2) != (False, False):
      assert got[key] in kinds[(o1, o2)]  # every non-ID path is in its probe split
    elif key in got:
      assert got[key] in kinds[(False, False)]
  assert all(len(data.splits[n]) > 0 for n in SPLITS)


def test_ood_atomic_never_composed_in_training():
  data = make_composition(2, **SMALL)
  ood = {(h, r, t) for h, r, t in zip(data.splits["ood_atomic"].heads_B.tolist(),
                                      data.splits["ood_atomic"].rels_BxK[:, 0].tolist(),
                                      data.splits["ood_atomic"].tails_B.tolist())}
  for h, r1, r2, b, t in rows_of(data.splits["train_inferred"]):
    assert (h, r1, b) not in ood and (b, r2, t) not in ood


def test_phi_subsampling():
  data = make_composition(3, **SMALL)
  n_id = len(data.splits["id_atomic"])
  assert len(data.splits["train_inferred"]) == round(1.5 * n_id)
  _, paths = brute_force_paths(data)
  n_pool = sum(1 for v in paths.values() if not v[2] and not v[3]) - len(data.splits["test_inferred_iid"])
  full = make_composition(3, **{**SMALL, "phi": n_pool / n_id})
  assert len(full.splits["train_inferred"]) == n_pool
  for name in SPLITS:
    if name != "train_inferred":
      assert full.splits[name] == data.splits[name]  # phi changes nothing else
  with pytest.raises(ValueError, match=f"only {n_pool} are available"):
    make_composition(3, **{**SMALL, "phi": (n_pool + 1) / n_id})


def test_probes_are_samples_of_their_split():
  data = make_composition(4, **SMALL)
  for name in SPLITS:
    split, probe = data.splits[name], data.probes[name]
    assert len(probe) == min(40, len(split))
    keys = [(h, *r, t) for h, r, t in zip(probe.heads_B.tolist(), probe.rels_BxK.tolist(), probe.tails_B.tolist())]
    every = {(h, *r, t) for h, r, t in zip(split.heads_B.tolist(), split.rels_BxK.tolist(), split.tails_B.tolist())}
    assert len(set(keys)) == len(keys) and set(keys) <= every


def test_composition_deterministic_in_seed():
  a, b, c = make_composition(7, **SMALL), make_composition(7, **SMALL), make_composition(8, **SMALL)
  for name in SPLITS:
    assert a.splits[name] == b.splits[name] and a.probes[name] == b.probes[name]
  assert a.splits["id_atomic"] != c.splits["id_atomic"]


def test_composition_paper_scale():
  data = make_composition(0, 2000, 200, 20, 0.05, 7.2)
  assert len(data.splits["id_atomic"]) + len(data.splits["ood_atomic"]) == 40000
  assert len(data.splits["train_inferred"]) == 273600
  assert len(data.probes["ood_atomic"]) == 2000
  assert {len(p) for n, p in data.probes.items() if n not in ("ood_atomic", "test_inferred_ood")} == {3000}


# ---------------------------------------------------------------- io


def small_dataset():
  data = make_composition(5, **SMALL)
  vocab = Vocab.standard(60, 12)
  train = [row for f in data.train() for row in facts_to_rows(vocab, f)]
  test = [row for name, f in data.probes.items() for row in facts_to_rows(vocab, f, name)]
  return data, vocab, train, test


def test_rows_format():
  vocab = Vocab.standard(10, 5)
  rows = facts_to_rows(vocab, Facts([5], [[2, 4]], [7]), "x")
  assert rows == [{"input_text": "<e_5><r_2><r_4>", "target_text": "<e_5><r_2><r_4><e_7></a>", "type": "x"}]
  assert "type" not in facts_to_rows(vocab, Facts([5], [[2]], [7]))[0]
  with pytest.raises(ValueError):
    facts_to_rows(vocab, Facts([10], [[2]], [7]))


def test_write_read_round_trip(tmp_path):
  data, vocab, train, test = small_dataset()
  write_dataset(tmp_path / "ds", vocab, train, test)
  assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["test.json", "train.json", "vocab.json"]
  assert json.loads((tmp_path / "ds" / "vocab.json").read_text())[0] == "<e_0>"  # no <pad>, as officially
  vocab2, train2, test2 = read_dataset(tmp_path / "ds")
  assert vocab2 == vocab and train2 == train and test2 == test
  groups = rows_to_facts(vocab2, test2)
  for name in SPLITS:
    probe = data.probes[name]
    assert groups[(probe.hop, name)] == Facts(probe.heads_B, probe.rels_BxK, probe.tails_B)
  train_groups = rows_to_facts(vocab2, train2)
  assert list(train_groups) == [(1, None), (2, None)] and len(train_groups[(1, None)]) == 240


def test_write_refuses_non_empty_folder(tmp_path):
  _, vocab, train, test = small_dataset()
  write_dataset(tmp_path, vocab, train, test)
  with pytest.raises(ValueError, match="non-empty folder"):
    write_dataset(tmp_path, vocab, train[:3], test)
  write_dataset(tmp_path, vocab, train[:3], test, overwrite=True)
  assert read_dataset(tmp_path)[1] == train[:3]
  assert not list(tmp_path.glob(".*"))


def _rows(input_text, target_text):
  return json.dumps([{"input_text": "<e_1><r_0>", "target_text": "<e_1><r_0><e_2></a>", "type": "x"},
                     {"input_text": input_text, "target_text": target_text, "type": "x"}])


BAD = {  # case: (file to replace, None: read a missing folder; its new text, None: delete it; expected message)
    "missing folder": (None, None, "dataset folder not found"),
    "missing file": ("test.json", None, "missing file"),
    "bad json": ("train.json", '[{"input_text": ', "train.json: invalid JSON"),
    "not a list": ("test.json", '{"a": 1}', "test.json: expected a JSON list"),
    "unknown token": ("train.json", _rows("<e_1><r_99>", "<e_1><r_99><e_2></a>"),
                      "train.json row 1: unknown token '<r_99>'"),
    "target not extending input": ("test.json", _rows("<e_1><r_0>", "<e_1><r_1><e_2></a>"),
                                   "test.json row 1: target_text '<e_1><r_1><e_2></a>' does not start"),
    "missing key": ("test.json", json.dumps([{"input_text": "<e_1><r_0>"}]), "test.json row 0: missing key"),
    "relation as head": ("train.json", _rows("<r_1><r_0>", "<r_1><r_0><e_2></a>"), "not an entity followed"),
    "relation as tail": ("train.json", _rows("<e_1><r_0>", "<e_1><r_0><r_2></a>"), "does not end with an entity"),
    "no answer end": ("train.json", _rows("<e_1><r_0>", "<e_1><r_0><e_2>"), "row 1: target_text"),
    "vocab gap": ("vocab.json", json.dumps(["<e_1>", "<r_0>", "</a>"]), "vocab.json"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_dataset_raises_one_line(tmp_path, case):
  _, vocab, train, test = small_dataset()
  folder = tmp_path / "ds"
  write_dataset(folder, vocab, train, test)
  name, text, expected = BAD[case]
  if name is None:
    folder = tmp_path / "nope"
  elif text is None:
    (folder / name).unlink()
  else:
    (folder / name).write_text(text)
  with pytest.raises(ValueError) as err:
    read_dataset(folder)
  msg = str(err.value)
  assert "\n" not in msg and expected in msg, msg


# ---------------------------------------------------------------- CLI


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "data_gen", *args], cwd=REPO, capture_output=True, text=True)


def test_cli_chains(tmp_path):
  out = tmp_path / "chains"
  proc = run_cli("chains", "--out", str(out), "--entities", "30", "--relations", "4", "--max-hop", "5",
                 "--train-per-hop", "300", "--test-per-hop", "20", "--probe-size", "25", "--seed", "3")
  assert proc.returncode == 0, proc.stderr
  vocab, train, test = read_dataset(out)
  assert vocab == Vocab.standard(30, 4)
  train_counts = collections.Counter(r["type"] for r in train)
  test_counts = collections.Counter(r["type"] for r in test)
  assert train_counts == {"atomic": 120, **{f"{k}hop_train": 300 for k in range(2, 6)}}
  assert test_counts == {"atomic_facts": 25, **{f"{k}hop_test": 20 for k in range(2, 6)},
                         **{f"{k}hop_train": 25 for k in range(2, 6)}}
  graph = graph_dict(permutation_graph(3, 30, 4))
  train_keys = set()
  for rows in (train, test):
    for (hop, type_name), f in rows_to_facts(vocab, rows).items():
      assert f.tails_B.tolist() == [walk(graph, h, r) for h, r in zip(f.heads_B, f.rels_BxK)]
      keys = chain_set(f.heads_B, f.rels_BxK)
      assert len(keys) == len(f)
      if rows is train:
        train_keys |= keys
      elif type_name.endswith("hop_test"):
        assert not keys & train_keys
      else:
        assert keys <= train_keys
  assert {(h, r) for h in range(30) for r in range(4)} <= train_keys
  assert json.loads((out / "valid.json").read_text()) == test  # create_dataset.py copies test.json


def test_cli_composition_in_process(tmp_path, capsys):
  assert main(["composition", "--out", str(tmp_path / "a"), "--entities", "60", "--relations", "12",
               "--out-degree", "4", "--phi", "1.0", "--probe-size", "30"]) == 0
  vocab, train, test = read_dataset(tmp_path / "a")
  assert len(train) == 240 + round(1.0 * 228) and all("type" not in r for r in train)
  assert set(collections.Counter(r["type"] for r in test)) == set(SPLITS)
  ood = [{k: r[k] for k in ("input_text", "target_text")} for r in test if r["type"] == "test_inferred_ood"]
  assert json.loads((tmp_path / "a" / "valid.json").read_text()) == ood  # the notebook's valid.json, untyped
  assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("args", [
    ["chains"],
    ["chains", "--out", "x", "--entities", "many"],
    ["chains", "--out", "x", "--min-hop", "5", "--max-hop", "3"],
    ["composition", "--out", "x", "--out-degree", "50", "--relations", "10"],
    ["composition", "--out", "x", "--entities", "20", "--relations", "4", "--out-degree", "2", "--phi", "100"],
    ["bogus"],
])
def test_cli_bad_args(tmp_path, args):
  proc = run_cli(*[str(tmp_path / a) if a == "x" else a for a in args])
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
  assert not (tmp_path / "x").exists()
