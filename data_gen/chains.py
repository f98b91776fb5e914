"""Task B of the recipe: a permutation graph and k-hop chains over it.

Every relation is a random permutation of the entities, so a chain (head, r_1..r_k) has exactly one tail.
Which chains are held out for testing is a pure function of the chain itself (a keyed hash), so a held-out
chain can never be drawn for training, whatever the sampling order. Atomic facts (1 hop) are never held out.
"""
from __future__ import annotations

import functools

import numpy as np

_MAX_ATTEMPTS = 256
_MAX_DRAW_FACTOR = 64
_ENUMERATE_LIMIT = 1 << 21  # enumerate the chain space below this size, sample above it
_SALT_TRAIN, _SALT_SPLIT, _SALT_TEST = 0x7261696E, 0x73706C74, 0x74657374


def mix64(x: np.ndarray) -> np.ndarray:
  """splitmix64 finaliser: a well-mixed uint64 hash of each element (of an array of x's shape; the arithmetic
  runs on a 1-d array, whose wrap-around numpy does not warn about, so no errstate context is paid per call)."""
  x = np.asarray(x, dtype=np.uint64)
  shape, x = x.shape, x.reshape(-1)
  x = x + np.uint64(0x9E3779B97F4A7C15)
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return (x ^ (x >> np.uint64(31))).reshape(shape)


def hash_columns(seed: int, *columns) -> np.ndarray:
  """Hash of (seed, column_0[i], column_1[i], ...) for each row i; a scalar column is the same value in every row
  (hashed once while no array column came before it)."""
  lead = next((i for i, col in enumerate(columns) if np.ndim(col)), len(columns))
  return _fold(_scalar_prefix(seed, tuple(int(col) for col in columns[:lead])).copy(), columns[lead:])


def _fold(h: np.ndarray, columns) -> np.ndarray:
  """h mixed with each column in turn."""
  for col in columns:
    h = mix64(h ^ np.asarray(col).astype(np.uint64))
  return h


@functools.lru_cache(maxsize=1024)
def _scalar_prefix(seed: int, scalars: tuple) -> np.ndarray:
  """hash_columns of a seed and scalar columns (cached: every batch starts with the same few)."""
  return _fold(mix64(np.uint64(seed % (1 << 64))), scalars)


def uniform01(h: np.ndarray) -> np.ndarray:
  """Map uint64 hashes to floats in [0, 1)."""
  return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def permutation_graph(seed: int, n_entities: int, n_relations: int) -> np.ndarray:
  """perms_MxN[r, h] = tail of relation r from head h; each row is a permutation."""
  if n_entities < 2 or n_relations < 1:
    raise ValueError(f"need n_entities >= 2 and n_relations >= 1, got {n_entities}, {n_relations}")
  rng = np.random.default_rng([seed, 0xB])
  return np.stack([rng.permutation(n_entities) for _ in range(n_relations)]).astype(np.int32)


def follow(perms_MxN: np.ndarray, heads_B, rels_BxK) -> np.ndarray:
  """Tail entity of each chain: apply relations left to right."""
  e_B = np.asarray(heads_B, dtype=np.int64)
  for r_B in np.asarray(rels_BxK, dtype=np.int64).T:
    e_B = perms_MxN[r_B, e_B]
  return e_B.astype(np.int32)


def is_held_out(seed: int, heads_B, rels_BxK, test_fraction: float) -> np.ndarray:
  """Whether each chain belongs to the held-out test class. 1-hop facts never do."""
  rels_BxK = np.asarray(rels_BxK)
  if rels_BxK.shape[1] < 2:
    return np.zeros(rels_BxK.shape[0], dtype=bool)
  h = hash_columns(seed ^ _SALT_SPLIT, rels_BxK.shape[1], heads_B, *rels_BxK.T)
  return uniform01(h) < test_fraction


def _draw(seed: int, salt: int, n_entities: int, n_relations: int, hop: int, ids_B, attempt: int):
  """Chain ids_B[i]'s head and relations: column j of hash_columns(seed ^ salt, hop, id, attempt, j) for j = 0
  (the head) .. hop, the shared prefix hashed once and the hop + 1 columns in one array."""
  prefix_B = hash_columns(seed ^ salt, hop, np.asarray(ids_B), attempt)
  h_JxB = mix64(prefix_B[None, :] ^ np.arange(hop + 1, dtype=np.uint64)[:, None])
  heads = h_JxB[0] % np.uint64(n_entities)
  rels_BxK = (h_JxB[1:] % np.uint64(n_relations)).T
  return heads.astype(np.int32), rels_BxK.astype(np.int32).reshape(len(prefix_B), hop)


def train_chains(seed: int, n_entities: int, n_relations: int, hop: int, chain_ids, test_fraction: float):
  """The training chain with each id: a deterministic draw, redrawn while it falls in the held-out class.

  Returns heads_B, rels_BxK. For hop 1 the id enumerates the atomic facts (id mod N*M).
  """
  chain_ids = np.asarray(chain_ids, dtype=np.int64)
  if hop == 1:
    c = chain_ids % (n_entities * n_relations)
    return (c // n_relations).astype(np.int32), (c % n_relations).astype(np.int32)[:, None]
  if not 0.0 <= test_fraction < 1.0:
    raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
  heads, rels = _draw(seed, _SALT_TRAIN, n_entities, n_relations, hop, chain_ids, 0)
  for attempt in range(1, _MAX_ATTEMPTS):
    bad = np.flatnonzero(is_held_out(seed, heads, rels, test_fraction))
    if bad.size == 0:
      return heads, rels
    heads[bad], rels[bad] = _draw(seed, _SALT_TRAIN, n_entities, n_relations, hop, chain_ids[bad], attempt)
  raise ValueError(f"could not draw a training {hop}-hop chain outside the held-out class")


def distinct_train_chains(seed: int, n_entities: int, n_relations: int, hop: int, n: int,
                          test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """The first n distinct training chains in chain-id order (heads_B, rels_BxK)."""
  n_draw = max(n, 1)
  while True:
    heads, rels = train_chains(seed, n_entities, n_relations, hop, np.arange(n_draw), test_fraction)
    first = _first_distinct(heads, rels)
    if first.size >= n:
      keep = first[:n]
      return heads[keep], rels[keep]
    if n_draw >= _MAX_DRAW_FACTOR * n:
      raise ValueError(f"only {first.size} distinct training {hop}-hop chains in {n_draw} draws, "
                       f"{n} wanted; ask for fewer or enlarge the graph")
    n_draw *= 2


def _first_distinct(heads_B, rels_BxK) -> np.ndarray:
  """Indices of the first occurrence of each distinct chain, in order."""
  return np.sort(np.unique(np.column_stack([heads_B, rels_BxK]), axis=0, return_index=True)[1])


def val_chains(seed: int, n_entities: int, n_relations: int, hop: int, n: int, test_fraction: float):
  """The validation chains of a hop, disjoint from held_out_chains(..., n) (the test chains): held-out chains
  n..2n-1 of its order, topped up to n, where the held-out class has fewer than 2n chains, with the hop's first
  distinct training-class chains in chain-id order (chains of a trained hop may have been trained on; beyond the
  curriculum none were). Hop 1 (atomic facts, all trained): facts n..2n-1 of the sample, topped up with other facts
  in id order, so with fewer than 2n atomic facts validation and test share facts (with at most n, val = test).
  Returns heads_B, rels_BxK."""
  heads, rels = held_out_chains(seed, n_entities, n_relations, hop, 2 * n, test_fraction)
  heads, rels, need = heads[n:], rels[n:], n - len(heads[n:])
  if need > 0:
    more_h, more_r = train_chains(seed, n_entities, n_relations, hop, np.arange(_MAX_DRAW_FACTOR * need),
                                  test_fraction)
    taken = set(map(tuple, np.column_stack([heads, rels]).tolist()))
    keep = [i for i in _first_distinct(more_h, more_r) if (more_h[i], *more_r[i]) not in taken][:need]
    heads, rels = np.concatenate([heads, more_h[keep]]), np.concatenate([rels, more_r[keep]])
  return heads.astype(np.int32), rels.astype(np.int32).reshape(len(heads), hop)


def chain_space(n_entities: int, n_relations: int, hop: int) -> int:
  return n_entities * n_relations**hop


def held_out_chains(seed: int, n_entities: int, n_relations: int, hop: int, n: int, test_fraction: float):
  """Up to n distinct held-out chains of the given hop (all of them when fewer exist), in a fixed order.

  Hop 1 returns a sample of atomic facts instead (they are all trained). Returns heads_B, rels_BxK.
  """
  space = chain_space(n_entities, n_relations, hop)
  if space <= _ENUMERATE_LIMIT:
    codes = np.arange(space, dtype=np.int64)
    heads, rels = _decode(codes, n_entities, n_relations, hop)
    if hop > 1:
      keep = is_held_out(seed, heads, rels, test_fraction)
      heads, rels = heads[keep], rels[keep]
    order = np.argsort(hash_columns(seed ^ _SALT_TEST, hop, np.arange(len(heads))))
    order = order[:n]
    return heads[order], rels[order]
  seen, out_h, out_r, start = set(), [], [], 0
  while len(out_h) < n:
    ids = np.arange(start, start + 4 * n)
    start += 4 * n
    h, r = _draw(seed, _SALT_TEST, n_entities, n_relations, hop, ids, 0)
    keep = is_held_out(seed, h, r, test_fraction)
    for hh, rr in zip(h[keep], r[keep]):
      key = (int(hh), *rr.tolist())
      if key not in seen and len(out_h) < n:
        seen.add(key)
        out_h.append(hh)
        out_r.append(rr)
    if start > 1000 * n:
      raise ValueError(f"found only {len(out_h)} held-out {hop}-hop chains; raise test_fraction")
  return np.asarray(out_h, np.int32), np.asarray(out_r, np.int32).reshape(len(out_h), hop)


def _decode(codes, n_entities: int, n_relations: int, hop: int):
  rels = []
  for _ in range(hop):
    rels.append(codes % n_relations)
    codes = codes // n_relations
  return codes.astype(np.int32), np.stack(rels[::-1], axis=1).astype(np.int32)
