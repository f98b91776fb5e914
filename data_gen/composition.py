"""Task A of the recipe: a random knowledge graph, its 2-hop compositions and the ID/OOD splits.

Each entity has `out_degree` distinct relations, each to a uniformly random tail. A fraction of the atomic
facts is OOD. A 2-hop path goes to training (or, rarely, to the IID test) only when both its facts are ID,
so an OOD atomic fact is never seen composed during training. Every random stage draws from its own
stream of the seed, so e.g. changing phi leaves the graph and the test splits unchanged.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from data_gen.facts import Facts

SPLITS = ("id_atomic", "ood_atomic", "train_inferred", "test_inferred_iid", "test_inferred_ood",
          "test_inferred_ood_first", "test_inferred_ood_second")
TRAIN_SPLITS = ("id_atomic", "ood_atomic", "train_inferred")
_GRAPH, _OOD, _IID, _SUBSAMPLE, _PROBE = range(5)


@dataclasses.dataclass(frozen=True)
class CompositionData:
  """splits: every fact of each split (train_inferred already subsampled); probes: <= n_probe of each."""

  n_entities: int
  n_relations: int
  splits: dict[str, Facts]
  probes: dict[str, Facts]

  def train(self) -> list[Facts]:
    """The training set: all atomic facts (ID then OOD) and the training inferred facts."""
    return [self.splits[name] for name in TRAIN_SPLITS]


def _rng(seed: int, *stage: int) -> np.random.Generator:
  return np.random.default_rng([seed, 0xA, *stage])


def _subsample(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
  """k sorted indices out of range(n), without replacement (all of them when k >= n)."""
  if k >= n:
    return np.arange(n)
  return np.sort(rng.choice(n, size=k, replace=False))


def make_composition(seed: int, n_entities: int, n_relations: int, out_degree: int, ood_ratio: float,
                     phi: float, n_probe: int = 3000, iid_test_prob: float = 0.005) -> CompositionData:
  """The task A dataset, a pure function of its arguments."""
  if n_entities < 1 or not 1 <= out_degree <= n_relations:
    raise ValueError(f"need n_entities >= 1 and 1 <= out_degree <= n_relations, got n_entities={n_entities}, "
                     f"out_degree={out_degree}, n_relations={n_relations}")
  for name, p in (("ood_ratio", ood_ratio), ("iid_test_prob", iid_test_prob)):
    if not 0.0 <= p <= 1.0:
      raise ValueError(f"{name} must be in [0, 1], got {p}")
  if phi < 0 or n_probe < 0:
    raise ValueError(f"need phi >= 0 and n_probe >= 0, got phi={phi}, n_probe={n_probe}")

  rng = _rng(seed, _GRAPH)
  rels_NxD = np.argsort(rng.random((n_entities, n_relations)), axis=1)[:, :out_degree]
  tails_NxD = rng.integers(n_entities, size=(n_entities, out_degree))
  heads_A = np.repeat(np.arange(n_entities), out_degree)  # atomic fact a = h * out_degree + j
  rels_A, tails_A = rels_NxD.ravel(), tails_NxD.ravel()
  n_atomic = heads_A.size
  ood_A = np.zeros(n_atomic, dtype=bool)
  ood_A[_rng(seed, _OOD).choice(n_atomic, size=round(ood_ratio * n_atomic), replace=False)] = True

  # Every 2-step path: first fact a1, second fact a2 = the j-th fact of a1's tail.
  first_P = np.repeat(np.arange(n_atomic), out_degree)
  second_P = tails_A[first_P] * out_degree + np.tile(np.arange(out_degree), n_atomic)
  inferred = Facts(heads_A[first_P], np.stack([rels_A[first_P], rels_A[second_P]], axis=1), tails_A[second_P],
                   tails_A[first_P])
  ood1_P, ood2_P = ood_A[first_P], ood_A[second_P]
  id_paths = np.flatnonzero(~ood1_P & ~ood2_P)
  iid_test = _rng(seed, _IID).random(id_paths.size) < iid_test_prob
  pool, test_iid = id_paths[~iid_test], id_paths[iid_test]
  n_train = round(phi * int((~ood_A).sum()))
  if n_train > pool.size:
    raise ValueError(f"phi={phi} needs {n_train} training inferred facts (phi x {int((~ood_A).sum())} ID atomic) "
                     f"but only {pool.size} are available")
  train = pool[_subsample(_rng(seed, _SUBSAMPLE), pool.size, n_train)]

  atomic = Facts(heads_A, rels_A[:, None], tails_A)
  splits = {
      "id_atomic": atomic.take(~ood_A),
      "ood_atomic": atomic.take(ood_A),
      "train_inferred": inferred.take(train),
      "test_inferred_iid": inferred.take(test_iid),
      "test_inferred_ood": inferred.take(ood1_P & ood2_P),
      "test_inferred_ood_first": inferred.take(ood1_P & ~ood2_P),
      "test_inferred_ood_second": inferred.take(~ood1_P & ood2_P),
  }
  probes = {name: f.take(_subsample(_rng(seed, _PROBE, i), len(f), n_probe))
            for i, (name, f) in enumerate(splits.items())}
  return CompositionData(n_entities, n_relations, splits, probes)
