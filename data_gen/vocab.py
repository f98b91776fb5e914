"""Token vocabulary of the official format: `<pad>` at 0, entities, relations, specials."""
from __future__ import annotations

import dataclasses
import re

import numpy as np

PAD = "<pad>"
SPECIALS = ("<mask>", "<sep>", "<a>", "</a>", "<q>", "</q>")
_TOKEN_RE = re.compile(r"<[^<>]+>")


@dataclasses.dataclass(frozen=True)
class Vocab:
  """Maps token strings to ids. Entities and relations each occupy one contiguous id range."""

  tokens: tuple[str, ...]

  def __post_init__(self):
    if not self.tokens or self.tokens[0] != PAD:
      raise ValueError(f"vocab must start with {PAD}")
    if len(set(self.tokens)) != len(self.tokens):
      raise ValueError("vocab has duplicate tokens")
    object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens)})
    for kind in ("e", "r"):
      ids = [self._index.get(f"<{kind}_{i}>") for i in range(self._count(kind))]
      if ids and (None in ids or ids != list(range(ids[0], ids[0] + len(ids)))):
        raise ValueError(f"vocab: <{kind}_i> tokens must be contiguous and in order")

  @classmethod
  def standard(cls, n_entities: int, n_relations: int) -> "Vocab":
    ents = [f"<e_{i}>" for i in range(n_entities)]
    rels = [f"<r_{i}>" for i in range(n_relations)]
    return cls((PAD, *ents, *rels, *SPECIALS))

  @classmethod
  def from_tokens(cls, tokens) -> "Vocab":
    """Builds a vocab from a token list as the official loader does: `<pad>` is put first if absent."""
    tokens = [t for t in tokens if t != PAD]
    return cls((PAD, *tokens))

  def _count(self, kind: str) -> int:
    return sum(1 for t in self.tokens if re.fullmatch(f"<{kind}_\\d+>", t))

  @property
  def size(self) -> int:
    return len(self.tokens)

  @property
  def pad_id(self) -> int:
    return 0

  @property
  def n_entities(self) -> int:
    return self._count("e")

  @property
  def n_relations(self) -> int:
    return self._count("r")

  @property
  def entity_offset(self) -> int:
    return self._index["<e_0>"]

  @property
  def relation_offset(self) -> int:
    return self._index["<r_0>"]

  def entity_ids(self, entities):
    """Token ids of entity indices (array-like)."""
    return np.asarray(entities) + self.entity_offset

  def relation_ids(self, relations):
    """Token ids of relation indices (array-like)."""
    return np.asarray(relations) + self.relation_offset

  def encode(self, text: str) -> list[int]:
    """Token ids of a text such as `<e_5><r_2>`; an unknown token raises ValueError naming it."""
    pieces = _TOKEN_RE.findall(text)
    if "".join(pieces) != text.replace(" ", ""):
      raise ValueError(f"malformed token text {text!r}")
    unknown = [p for p in pieces if p not in self._index]
    if unknown:
      raise ValueError(f"unknown token {unknown[0]!r} in {text!r}")
    return [self._index[p] for p in pieces]

  def decode(self, ids) -> str:
    return "".join(self.tokens[int(i)] for i in ids)
