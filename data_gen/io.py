"""The official dataset format: a folder with train.json, test.json and vocab.json (and valid.json, which the
official training scripts open: a copy of test.json for task B, the untyped OOD 2-hop test facts for task A).

train/test.json hold lists of {"input_text", "target_text", "type"} ("type" optional in train), with
input_text = `<e_h><r_1>..<r_k>` and target_text = input_text + `<e_t></a>`. vocab.json is the list of token
strings without `<pad>` (the official loader puts it at id 0). Malformed data raises a one-line ValueError.
"""
from __future__ import annotations

import json
import pathlib

import numpy as np

from data_gen.facts import Facts
from data_gen.vocab import Vocab
from looprec.files import write_json_atomic

END = "</a>"
FILES = ("train.json", "test.json", "vocab.json")


def _short(text, limit: int = 80) -> str:
  r = repr(text)
  return r if len(r) <= limit else r[:limit - 3] + "..."


def facts_to_rows(vocab: Vocab, facts: Facts, type_name: str | None = None) -> list[dict]:
  """One row per fact; "type" is set only when type_name is given."""
  if not len(facts):
    return []
  n_ent, n_rel = vocab.n_entities, vocab.n_relations
  if (min(facts.heads_B.min(), facts.rels_BxK.min(), facts.tails_B.min()) < 0
      or max(facts.heads_B.max(), facts.tails_B.max()) >= n_ent or facts.rels_BxK.max() >= n_rel):
    raise ValueError(f"facts index past the vocab's {n_ent} entities / {n_rel} relations")
  ent = vocab.tokens[vocab.entity_offset:vocab.entity_offset + n_ent]
  rel = vocab.tokens[vocab.relation_offset:vocab.relation_offset + n_rel]
  rows = []
  for h, rels, t in zip(facts.heads_B.tolist(), facts.rels_BxK.tolist(), facts.tails_B.tolist()):
    text = ent[h] + "".join([rel[r] for r in rels])
    row = {"input_text": text, "target_text": text + ent[t] + END}
    if type_name is not None:
      row["type"] = type_name
    rows.append(row)
  return rows


def write_dataset(folder, vocab: Vocab, train_rows: list[dict], test_rows: list[dict],
                  overwrite: bool = False, valid_rows: list[dict] | None = None) -> None:
  """Writes train.json, test.json, valid.json (when valid_rows is given; the official training scripts open it)
  and vocab.json into folder, creating it.

  vocab.json is removed first and written last, so an interrupted write never leaves a readable dataset.
  """
  folder = pathlib.Path(folder)
  if folder.exists() and not folder.is_dir():
    raise ValueError(f"dataset path exists and is not a folder: {folder}")
  if folder.is_dir() and any(folder.iterdir()) and not overwrite:
    raise ValueError(f"refusing to write into non-empty folder {folder} (pass overwrite=True, or --overwrite)")
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "vocab.json").unlink(missing_ok=True)
  files = {"train.json": train_rows, "test.json": test_rows}
  if valid_rows is not None:
    files["valid.json"] = valid_rows
  files["vocab.json"] = list(vocab.tokens[1:])
  for name, data in files.items():
    write_json_atomic(folder / name, data)


def _read_json_list(path: pathlib.Path) -> list:
  if not path.is_file():
    raise ValueError(f"missing file: {path}")
  try:
    data = json.loads(path.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: invalid JSON: {e}") from None
  if not isinstance(data, list):
    raise ValueError(f"{path}: expected a JSON list, got {type(data).__name__}")
  return data


def read_vocab(path) -> Vocab:
  """The Vocab of a vocab.json file (a list of token strings)."""
  path = pathlib.Path(path)
  tokens = _read_json_list(path)
  bad = [t for t in tokens if not isinstance(t, str)]
  if bad:
    raise ValueError(f"{path}: tokens must be strings, got {_short(bad[0])}")
  try:
    vocab = Vocab.from_tokens(tokens)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None
  missing = [t for t in ("<e_0>", "<r_0>", END) if t not in tokens]
  if missing:
    raise ValueError(f"{path}: vocab lacks {missing[0]!r}")
  return vocab


def read_dataset(folder) -> tuple[Vocab, list[dict], list[dict]]:
  """(vocab, train_rows, test_rows) of a dataset folder; every row is checked as rows_to_facts does."""
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise ValueError(f"dataset folder not found: {folder}")
  vocab = read_vocab(folder / "vocab.json")
  train_rows = _read_json_list(folder / "train.json")
  test_rows = _read_json_list(folder / "test.json")
  rows_to_facts(vocab, train_rows, source=str(folder / "train.json"))
  rows_to_facts(vocab, test_rows, source=str(folder / "test.json"))
  return vocab, train_rows, test_rows


def _parse_row(vocab: Vocab, ents: range, rels: range, row, where: str):
  """(head, relations, tail, type) of one row as indices; ents/rels are the token id ranges."""
  if not isinstance(row, dict):
    raise ValueError(f"{where}: expected an object, got {type(row).__name__}")
  for key in ("input_text", "target_text"):
    if key not in row:
      raise ValueError(f"{where}: missing key {key!r}")
    if not isinstance(row[key], str):
      raise ValueError(f"{where}: {key!r} must be a string, got {type(row[key]).__name__}")
  type_name = row.get("type")
  if type_name is not None and not isinstance(type_name, str):
    raise ValueError(f"{where}: 'type' must be a string, got {type(type_name).__name__}")
  text, target = row["input_text"], row["target_text"]
  if not target.startswith(text):
    raise ValueError(f"{where}: target_text {_short(target)} does not start with input_text {_short(text)}")
  try:
    ids, answer = vocab.encode(text), vocab.encode(target[len(text):])
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from None
  if len(ids) < 2 or ids[0] not in ents or any(i not in rels for i in ids[1:]):
    raise ValueError(f"{where}: input_text {_short(text)} is not an entity followed by relations")
  if len(answer) != 2 or answer[0] not in ents or vocab.tokens[answer[1]] != END:
    raise ValueError(f"{where}: target_text {_short(target)} does not end with an entity then {END!r}")
  return ids[0] - ents.start, [i - rels.start for i in ids[1:]], answer[0] - ents.start, type_name


def rows_to_facts(vocab: Vocab, rows: list[dict], source: str = "rows") -> dict[tuple[int, str | None], Facts]:
  """Parses rows into Facts grouped by (hop, type), groups and rows in order of appearance.

  type is None for rows without one. source names the rows in error messages (e.g. the file).
  """
  if not vocab.n_entities or not vocab.n_relations:
    raise ValueError(f"{source}: the vocab has no entity or no relation tokens")
  ents = range(vocab.entity_offset, vocab.entity_offset + vocab.n_entities)
  rels = range(vocab.relation_offset, vocab.relation_offset + vocab.n_relations)
  groups = {}
  for i, row in enumerate(rows):
    h, rs, t, type_name = _parse_row(vocab, ents, rels, row, f"{source} row {i}")
    groups.setdefault((len(rs), type_name), []).append((h, rs, t))
  return {key: Facts(np.array([g[0] for g in group]), np.array([g[1] for g in group]),
                     np.array([g[2] for g in group]))
          for key, group in groups.items()}
