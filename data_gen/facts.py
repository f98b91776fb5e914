"""A set of facts (head, r_1..r_k) -> tail of one hop count k, as parallel read-only numpy arrays."""
from __future__ import annotations

import dataclasses

import numpy as np


def _frozen(x) -> np.ndarray:
  a = np.asarray(x, dtype=np.int32).view()
  a.setflags(write=False)
  return a


@dataclasses.dataclass(frozen=True, eq=False)
class Facts:
  """Fact i is (heads_B[i], rels_BxK[i]) -> tails_B[i]; bridges_B[i] is the entity after the first hop
  of a 2-hop fact (None when not tracked)."""

  heads_B: np.ndarray
  rels_BxK: np.ndarray
  tails_B: np.ndarray
  bridges_B: np.ndarray | None = None

  def __post_init__(self):
    for name in ("heads_B", "rels_BxK", "tails_B", "bridges_B"):
      if getattr(self, name) is not None:
        object.__setattr__(self, name, _frozen(getattr(self, name)))
    b = self.heads_B.shape
    if (len(b) != 1 or self.rels_BxK.ndim != 2 or self.rels_BxK.shape[0] != b[0] or self.rels_BxK.shape[1] < 1
        or self.tails_B.shape != b or (self.bridges_B is not None and self.bridges_B.shape != b)):
      raise ValueError(f"inconsistent fact shapes: heads {b}, rels {self.rels_BxK.shape}, tails "
                       f"{self.tails_B.shape}, bridges {None if self.bridges_B is None else self.bridges_B.shape}")

  def __len__(self) -> int:
    return self.heads_B.shape[0]

  @property
  def hop(self) -> int:
    return self.rels_BxK.shape[1]

  def take(self, idx) -> "Facts":
    """The facts at the given indices (or boolean mask)."""
    bridges = None if self.bridges_B is None else self.bridges_B[idx]
    return Facts(self.heads_B[idx], self.rels_BxK[idx], self.tails_B[idx], bridges)

  def __eq__(self, other) -> bool:
    if not isinstance(other, Facts):
      return NotImplemented
    if (self.bridges_B is None) != (other.bridges_B is None):
      return False
    same = [np.array_equal(a, b) for a, b in ((self.heads_B, other.heads_B), (self.rels_BxK, other.rels_BxK),
                                              (self.tails_B, other.tails_B))]
    return all(same) and (self.bridges_B is None or np.array_equal(self.bridges_B, other.bridges_B))
