"""CLI: `python -m data_gen {chains,composition} --out DIR [options]` writes an official-format dataset folder."""
from __future__ import annotations

import argparse
import collections
import sys

import numpy as np

from data_gen import chains, composition
from data_gen.facts import Facts
from data_gen.io import facts_to_rows, write_dataset
from data_gen.vocab import Vocab
from looprec.files import OneLineParser



def chains_dataset(seed: int, n_entities: int, n_relations: int, min_hop: int, max_hop: int,
                   train_per_hop: int, test_per_hop: int, test_fraction: float, probe_size: int):
  """Task B as (vocab, train_rows, test_rows), with the type names of the official create_dataset.py.

  train: every atomic fact ("atomic") and train_per_hop distinct chains per hop ("{k}hop_train");
  test: the held-out "{k}hop_test" chains, and probe_size samples of "atomic_facts" and of each "{k}hop_train"
  (valid.json is a copy of it, as create_dataset.py makes it).
  """
  if not 2 <= min_hop <= max_hop:
    raise ValueError(f"need 2 <= min_hop <= max_hop, got {min_hop}, {max_hop}")
  if min(train_per_hop, test_per_hop, probe_size) < 0:
    raise ValueError("train/test/probe sizes must be >= 0")
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
  perms_MxN = chains.permutation_graph(seed, n_entities, n_relations)
  vocab = Vocab.standard(n_entities, n_relations)

  def facts(heads, rels):
    return Facts(heads, rels, chains.follow(perms_MxN, heads, rels))

  atomic = facts(*chains.train_chains(seed, n_entities, n_relations, 1, np.arange(n_entities * n_relations),
                                      test_fraction))
  atomic_probe = chains.held_out_chains(seed, n_entities, n_relations, 1, probe_size, test_fraction)
  train_rows = facts_to_rows(vocab, atomic, "atomic")
  test_rows, probe_rows = [], facts_to_rows(vocab, facts(*atomic_probe), "atomic_facts")
  for hop in range(min_hop, max_hop + 1):
    train = facts(*chains.distinct_train_chains(seed, n_entities, n_relations, hop, train_per_hop, test_fraction))
    test = facts(*chains.held_out_chains(seed, n_entities, n_relations, hop, test_per_hop, test_fraction))
    hop_rows = facts_to_rows(vocab, train, f"{hop}hop_train")
    pick = np.random.default_rng([seed, 0xB, hop]).choice(len(train), min(probe_size, len(train)), replace=False)
    train_rows += hop_rows
    test_rows += facts_to_rows(vocab, test, f"{hop}hop_test")
    probe_rows += [dict(hop_rows[i]) for i in np.sort(pick)]
  test_rows += probe_rows
  return vocab, train_rows, test_rows


def composition_dataset(seed: int, n_entities: int, n_relations: int, out_degree: int, ood_ratio: float,
                        phi: float, probe_size: int, iid_test_prob: float = 0.005):
  """Task A as (vocab, train_rows, test_rows, valid_rows): untyped training rows, probes typed by split name, and
  the untyped OOD 2-hop test facts (the composition notebook's valid.json)."""
  data = composition.make_composition(seed, n_entities, n_relations, out_degree, ood_ratio, phi, probe_size,
                                      iid_test_prob)
  vocab = Vocab.standard(n_entities, n_relations)
  train_rows = [row for f in data.train() for row in facts_to_rows(vocab, f)]
  test_rows = [row for name, f in data.probes.items() for row in facts_to_rows(vocab, f, name)]
  return vocab, train_rows, test_rows, facts_to_rows(vocab, data.probes["test_inferred_ood"])


def _parser() -> argparse.ArgumentParser:
  parser = OneLineParser(prog="python -m data_gen", description=__doc__)
  sub = parser.add_subparsers(dest="task", required=True)
  ch = sub.add_parser("chains", help="task B: k-hop chains over a permutation graph")
  ch.add_argument("--entities", type=int, default=200)
  ch.add_argument("--relations", type=int, default=10)
  ch.add_argument("--min-hop", type=int, default=2)
  ch.add_argument("--max-hop", type=int, default=40)
  ch.add_argument("--train-per-hop", type=int, default=15000)
  ch.add_argument("--test-per-hop", type=int, default=750)
  ch.add_argument("--test-fraction", type=float, default=0.05, help="share of each hop's chains held out")
  ch.add_argument("--probe-size", type=int, default=2000, help="test samples of atomic and of each hop's train")
  co = sub.add_parser("composition", help="task A: 2-hop composition with ID/OOD splits")
  co.add_argument("--entities", type=int, default=2000)
  co.add_argument("--relations", type=int, default=200)
  co.add_argument("--out-degree", type=int, default=20)
  co.add_argument("--ood-ratio", type=float, default=0.05)
  co.add_argument("--phi", type=float, default=7.2)
  co.add_argument("--probe-size", type=int, default=3000)
  co.add_argument("--iid-test-prob", type=float, default=0.005, help="share of ID 2-hop paths held out for testing")
  for p in (ch, co):
    p.add_argument("--out", required=True, help="dataset folder to create")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
  return parser


def main(argv=None) -> int:
  try:
    args = _parser().parse_args(argv)
    if args.task == "chains":
      vocab, train_rows, test_rows = chains_dataset(
          args.seed, args.entities, args.relations, args.min_hop, args.max_hop, args.train_per_hop,
          args.test_per_hop, args.test_fraction, args.probe_size)
      valid_rows = test_rows
    else:
      vocab, train_rows, test_rows, valid_rows = composition_dataset(
          args.seed, args.entities, args.relations, args.out_degree, args.ood_ratio, args.phi, args.probe_size,
          args.iid_test_prob)
    write_dataset(args.out, vocab, train_rows, test_rows, overwrite=args.overwrite, valid_rows=valid_rows)
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  counts = collections.Counter(r["type"] for r in test_rows)
  print(f"wrote {args.out}: {len(train_rows)} train rows, {len(test_rows)} test rows "
        f"({', '.join(f'{k} {v}' for k, v in counts.items())})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
