"""Data pipeline: k-hop chain and 2-hop composition tasks as grain datasets of batches, fixed evaluation splits.

A task turns example ids into arrays, deterministically, and owns its curriculum (`Curriculum`: stages of
training data, and when to move on): chains are generated from the id (or picked from a
fixed pool), composition facts are the rows of a finite training set in a per-epoch grain shuffle. Step s of a
curriculum stage that began at step s0 reads example ids [(s0 + j) * B, (s0 + j + 1) * B) with j = s - s0, so a
grain `MapDataset` of batches has random access and its iterator state (`next_index`) plus (stage, s0) resumes
the stream exactly.

A batch is a dict of numpy arrays: `tokens` (B x T int32, right-padded with 0), `read_pos` (B, where the
answer is read), `target` (B, the answer's token id), `hop` (B). Evaluation splits (`eval_split`, `probes`) also
carry `n_answers` (B, the size of the answer set, the entities), which halting bounds relative to it read.
"""
from __future__ import annotations

import dataclasses
import os

import grain
import jax
import numpy as np

from data_gen import chains, composition
from data_gen.facts import Facts
from data_gen.vocab import Vocab
from looprec.config import ChainDataConfig, CompositionDataConfig, ConfigError
from looprec.selection import val_split

_MAX_STEPS = 1 << 40
_SALT_HOP = 0x686F70


def width(hop: int, answer_at: str) -> int:
  """Tokens a hop-k query occupies: head, k relations, and the read position when it is separate."""
  return 1 + hop + (answer_at == "next")


def split_name(hop: int) -> str:
  """Evaluation split of a hop count: `atomic` for 1 hop, `{k}hop_test` (held-out chains) beyond."""
  return "atomic" if hop == 1 else f"{hop}hop_test"


def hop_of(split: str) -> int:
  """The hop count of a test or validation split (`atomic`, `atomic_val`, `{k}hop_test`, `{k}hop_val`)."""
  return 1 if split.startswith("atomic") else int(split.removesuffix("hop_test").removesuffix("hop_val"))


def encode(vocab: Vocab, heads_B, rels_BxK, tails_B, seq_len: int, answer_at: str, hops_B=None, pad_hop=0) -> dict:
  """Token arrays of facts `head r_1..r_k -> tail`; rows of rels_BxK may be right-padded with -1.

  Sequences are right-padded only as far as the deepest query (or pad_hop, for a fixed shape) needs: trailing
  pads change nothing in a causal model with pads masked as keys, and they cost compute.
  """
  rels_BxK = np.asarray(rels_BxK)
  b = len(heads_B)
  hops_B = np.full(b, rels_BxK.shape[1]) if hops_B is None else np.asarray(hops_B)
  deepest = max(rels_BxK.shape[1], pad_hop)
  t = width(deepest, answer_at)
  if t > seq_len:
    raise ConfigError(f"a {deepest}-hop query needs data.seq_len >= {t}, got {seq_len}")
  tokens_BxT = np.zeros((b, t), np.int32)
  tokens_BxT[:, 0] = vocab.entity_ids(heads_B)
  cols = np.arange(rels_BxK.shape[1])[None, :]
  valid_BxK = cols < hops_B[:, None]
  tokens_BxT[:, 1:1 + rels_BxK.shape[1]] = np.where(valid_BxK, vocab.relation_ids(np.maximum(rels_BxK, 0)), 0)
  read_pos_B = hops_B + (answer_at == "next")
  return {"tokens": tokens_BxT, "read_pos": read_pos_B.astype(np.int32),
          "target": vocab.entity_ids(tails_B).astype(np.int32), "hop": hops_B.astype(np.int32)}


@dataclasses.dataclass(frozen=True)
class Curriculum:
  """Stages of a task's training data: stage s trains on facts of <= s hops, from stage `first` to `last`. The run
  moves to stage s + 1 when the accuracy on `gate_split(s)` (the held-out s-hop chains) exceeds `threshold`; a
  single-stage curriculum (first == last) never moves."""

  first: int
  last: int
  threshold: float = 1.0
  check: str = "steps"  # steps: gate checked every eval_every steps | epoch: once per epoch of the stage's rows
  min_epochs: int = 0  # no stage ends before this many epochs since training began (forced grokking)
  rows: tuple = ()  # training rows at stages first..last (check=epoch)

  def check_every(self, stage: int, batch_size: int, eval_every: int) -> int:
    """Steps between two gate checks of a stage: eval_every, or one epoch of its rows (the last batch partial)."""
    if self.check == "steps":
      return eval_every
    return -(-self.rows[stage - self.first] // batch_size)

  def epochs(self, stages: list, step: int, batch_size: int) -> int:
    """Whole epochs trained by `step`, summed over the stages so far ([[start step, stage], ...])."""
    ends = [start for start, _ in stages[1:]] + [step]
    return sum((end - start) // self.check_every(stage, batch_size, 1) for (start, stage), end in zip(stages, ends))

  def gate_split(self, stage: int) -> str:
    """The split whose accuracy decides whether stage `stage` is done (the held-out stage-hop chains)."""
    return split_name(stage)

  def passes(self, stage: int, accuracy: dict, epochs: int = 0) -> bool:
    """Whether `stage` passes its gate, given the latest accuracy per monitored split and the epochs trained."""
    return accuracy.get(self.gate_split(stage), 0.0) > self.threshold and epochs >= self.min_epochs


class GraphTask:
  """What the graph tasks share: `train_width`, the tokens of a training batch at the curriculum's last stage."""

  @property
  def train_width(self) -> int:
    return width(self.curriculum.last, self.cfg.answer_at)


def with_answer_set(examples: dict, vocab: Vocab) -> dict:
  """examples with `n_answers`: the size of the set each answer is drawn from (the entities)."""
  return {**examples, "n_answers": np.full(len(examples["target"]), vocab.n_entities, np.int32)}


def take(examples: dict, idx) -> dict:
  return {k: v[idx] for k, v in examples.items()}


@dataclasses.dataclass
class ChainTask(GraphTask):
  """RECIPE task B: chains over a permutation graph, generated on the fly (`source="generate"`)."""

  cfg: ChainDataConfig

  def __post_init__(self):
    c = self.cfg
    self.vocab = Vocab.standard(c.n_entities, c.n_relations)
    self.perms_MxN = chains.permutation_graph(c.seed, c.n_entities, c.n_relations)
    cur = c.curriculum
    rows = tuple(c.n_entities * c.n_relations + (stage - 1) * c.train_chains_per_hop
                 for stage in range(cur.first_hop, cur.last_hop + 1))  # atomic facts + each hop's chain pool
    self.curriculum = Curriculum(cur.first_hop, cur.last_hop, cur.threshold, cur.check, cur.min_epochs, rows)
    self._pools = {}

  @property
  def deepest_eval_hop(self) -> int:
    """The deepest chain that fits in data.seq_len."""
    return self.cfg.fitting_hops()

  def hop_weights(self, stage: int) -> np.ndarray:
    """How often each hop 1..stage is drawn at a curriculum stage."""
    c = self.cfg
    if c.hop_weights == "uniform":
      w = np.ones(stage)
    else:
      pool = c.train_chains_per_hop or chains.chain_space(c.n_entities, c.n_relations, 2)
      w = np.array([c.n_entities * c.n_relations] + [min(pool, chains.chain_space(c.n_entities, c.n_relations, k))
                                                       for k in range(2, stage + 1)], float)
    return w / w.sum()

  def train_examples(self, stage: int, ids_B, pad_hop: int = 0) -> dict:
    """Training examples with the given ids at a curriculum stage: hops drawn from 1..stage (held-out chains
    never appear), padded to fit pad_hop hops."""
    c = self.cfg
    ids_B = np.asarray(ids_B, np.int64)
    u = chains.uniform01(chains.hash_columns(c.seed ^ _SALT_HOP, stage, ids_B))
    hops_B = 1 + np.searchsorted(np.cumsum(self.hop_weights(stage))[:-1], u, side="right")
    heads_B = np.zeros(len(ids_B), np.int32)
    rels_BxK = np.full((len(ids_B), stage), -1, np.int32)
    pick_B = chains.hash_columns(c.seed, ids_B)  # hashed once per batch, not once per hop: the same values
    for hop in np.unique(hops_B):
      rows = np.flatnonzero(hops_B == hop)
      heads_B[rows], rels_BxK[rows, :hop] = self._chains(int(hop), ids_B[rows], pick_B[rows])
    tails_B = self._tails(heads_B, rels_BxK)
    return encode(self.vocab, heads_B, rels_BxK, tails_B, c.seq_len, c.answer_at, hops_B, pad_hop)

  def _chains(self, hop: int, ids_B, pick_B):
    """Training chains for example ids: fresh ones, or picks from a fixed pool of distinct chains per hop (row
    pick_B mod the pool's size, pick_B the hash of the id). Atomic facts (hop 1) are always all in play."""
    c = self.cfg
    if hop == 1 or not c.train_chains_per_hop:
      return chains.train_chains(c.seed, c.n_entities, c.n_relations, hop, ids_B, c.test_fraction)
    if hop not in self._pools:
      self._pools[hop] = chains.distinct_train_chains(c.seed, c.n_entities, c.n_relations, hop,
                                                      c.train_chains_per_hop, c.test_fraction)
    heads, rels = self._pools[hop]
    pick = (pick_B % np.uint64(len(heads))).astype(np.int64)
    return heads[pick], rels[pick]

  def _tails(self, heads_B, rels_BxK):
    e_B = np.asarray(heads_B, np.int64)
    for r_B in rels_BxK.T:
      e_B = np.where(r_B >= 0, self.perms_MxN[np.maximum(r_B, 0), e_B], e_B)
    return e_B

  def eval_split(self, hop: int) -> dict:
    """Held-out chains of one hop (hop 1: a sample of the atomic facts, which are all trained)."""
    c = self.cfg
    if hop > self.deepest_eval_hop:
      raise ConfigError(f"{hop}-hop evaluation needs a longer data.seq_len (at most {self.deepest_eval_hop} hops fit)")
    heads, rels = chains.held_out_chains(c.seed, c.n_entities, c.n_relations, hop, c.n_eval, c.test_fraction)
    return with_answer_set(encode(self.vocab, heads, rels, self._tails(heads, rels), c.seq_len, c.answer_at),
                           self.vocab)

  def val_split(self, hop: int) -> dict:
    """The validation chains of one hop, disjoint from eval_split's (`chains.val_chains`: the next n_eval
    held-out chains, topped up with training-class chains where too few are held out)."""
    c = self.cfg
    self.eval_split(hop)  # the same seq_len check
    heads, rels = chains.val_chains(c.seed, c.n_entities, c.n_relations, hop, c.n_eval, c.test_fraction)
    return with_answer_set(encode(self.vocab, heads, rels, self._tails(heads, rels), c.seq_len, c.answer_at),
                           self.vocab)

  def monitor_splits(self, stage: int) -> dict:
    return monitor_hops(self, stage)


@dataclasses.dataclass
class JsonChainTask(GraphTask):
  """The same interface over an official-format folder (`train.json`, `test.json`, `vocab.json`)."""

  cfg: ChainDataConfig

  def __post_init__(self):
    from data_gen import io  # pylint: disable=import-outside-toplevel
    if not os.path.isdir(self.cfg.source):
      raise ConfigError(f"data folder {self.cfg.source!r} does not exist")
    try:
      self.vocab, train_rows, test_rows = io.read_dataset(self.cfg.source)
      if not train_rows:
        raise ValueError(f"{self.cfg.source}/train.json has no rows")
      self.train = self._encode(io.rows_to_facts(self.vocab, train_rows, "train.json"))["all"]
      self.test = self._encode(io.rows_to_facts(self.vocab, test_rows, "test.json"))
    except ValueError as e:
      raise ConfigError(str(e)) from None
    c = self.cfg.curriculum
    if c.last_hop > self.deepest_train_hop:
      raise ConfigError(f"data.curriculum.last_hop={c.last_hop} exceeds the data's deepest chain "
                        f"({self.deepest_train_hop} hops)")
    rows = tuple(int((self.train["hop"] <= stage).sum()) for stage in range(c.first_hop, c.last_hop + 1))
    self.curriculum = Curriculum(c.first_hop, c.last_hop, c.threshold, c.check, c.min_epochs, rows)

  def _encode(self, groups: dict) -> dict:
    """{(hop, type): Facts} -> {type: examples}, plus "all"."""
    c, by_type = self.cfg, {}
    for (_, row_type), f in groups.items():
      ex = encode(self.vocab, f.heads_B, f.rels_BxK, f.tails_B, c.seq_len, c.answer_at, pad_hop=c.fitting_hops())
      by_type.setdefault(row_type, []).append(ex)
      by_type.setdefault("all", []).append(ex)
    return {t: concat(parts) for t, parts in by_type.items()}

  @property
  def deepest_train_hop(self) -> int:
    return int(self.train["hop"].max())

  @property
  def deepest_eval_hop(self) -> int:
    """The deepest hop with an evaluation split."""
    return max([self.deepest_train_hop] + [hop_of(t) for t in self.test if t.endswith("hop_test")])

  def train_examples(self, stage: int, ids_B, pad_hop: int = 0) -> dict:
    del pad_hop  # rows are already padded to the deepest training query
    rows = np.flatnonzero(self.train["hop"] <= stage)
    pick = chains.hash_columns(self.cfg.seed ^ stage, np.asarray(ids_B)) % np.uint64(len(rows))
    return take(self.train, rows[pick.astype(np.int64)])

  def _held_out(self, hop: int) -> dict:
    """Every test row of one hop (hop 1 without atomic test rows: the atomic training rows, all trained)."""
    name = "atomic_facts" if hop == 1 else f"{hop}hop_test"
    if name in self.test:
      ex = self.test[name]
    elif hop == 1:
      ex = take(self.train, np.flatnonzero(self.train["hop"] == 1))
    else:
      raise ConfigError(f"data folder {self.cfg.source!r} has no test rows of type {name!r}")
    if not len(ex["hop"]):
      raise ConfigError(f"data folder {self.cfg.source!r}: split {name!r} is empty")
    return with_answer_set(ex, self.vocab)

  def eval_split(self, hop: int) -> dict:
    """The first n_eval test rows of one hop."""
    return take(self._held_out(hop), slice(0, self.cfg.n_eval))

  def val_split(self, hop: int) -> dict:
    """Test rows n_eval..2 n_eval - 1 of one hop, topped up to n_eval with the hop's training rows in file order
    (the rule of `chains.val_chains`)."""
    n = self.cfg.n_eval
    rest = take(self._held_out(hop), slice(n, 2 * n))
    more = take(self.train, np.flatnonzero(self.train["hop"] == hop)[:n - len(rest["hop"])])
    return concat([rest, with_answer_set(more, self.vocab)])

  def monitor_splits(self, stage: int) -> dict:
    return monitor_hops(self, stage)


def monitor_hops(task, stage: int) -> dict:
  """What training evaluates at a curriculum stage: the held-out split of every hop trained so far."""
  return {split_name(hop): task.eval_split(hop) for hop in range(1, stage + 1)}


@dataclasses.dataclass
class CompositionTask(GraphTask):
  """RECIPE task A: a finite training set (all atomic facts + the training 2-hop facts) streamed in epochs,
  each a fresh grain shuffle of the rows, and fixed probe splits (`composition.SPLITS`, each held-out one halved
  into test and `val_*`: `halves`). Probe examples of 2-hop facts carry `bridge`, the entity after the first hop
  (token id), for the logit lens."""

  cfg: CompositionDataConfig
  deepest_eval_hop = 2
  curriculum = Curriculum(2, 2)  # one stage: every fact (1 and 2 hops) from the first step

  def __post_init__(self):
    c = self.cfg
    if c.source == "generate":
      try:
        data = composition.make_composition(c.seed, c.n_entities, c.n_relations, c.out_degree, c.ood_ratio, c.phi,
                                            c.n_probe, c.iid_test_prob)
      except ValueError as e:
        raise ConfigError(str(e)) from None
      self.vocab, train_facts, probes = Vocab.standard(c.n_entities, c.n_relations), data.train(), data.probes
    else:
      self.vocab, train_facts, probes = _read_composition(c.source, c.n_probe)
    self.train = concat([self._encode(f, with_bridge=False) for f in train_facts
                         for _ in range(c.atomic_repeats if f.hop == 1 else 1)])
    empty = [name for name, f in probes.items() if not len(f.tails_B)]
    if empty:
      where = (f"the graph is too small for it (data.n_entities={c.n_entities}, data.out_degree={c.out_degree}, "
               f"data.ood_ratio={c.ood_ratio})" if c.source == "generate" else f"in {c.source}/test.json")
      raise ConfigError(f"probe split {empty[0]!r} is empty: {where}")
    self.probes = halves({name: with_answer_set(self._encode(f, with_bridge=True), self.vocab)
                          for name, f in probes.items()})
    self.order = grain.MapDataset.range(len(self.train["target"])).shuffle(seed=c.seed).repeat()

  def _encode(self, facts: Facts, with_bridge: bool) -> dict:
    layout = "last_input" if self.cfg.answer_at == "batch_last" else self.cfg.answer_at
    ex = encode(self.vocab, facts.heads_B, facts.rels_BxK, facts.tails_B, width(2, layout), layout, pad_hop=2)
    if with_bridge and facts.bridges_B is not None:
      ex["bridge"] = self.vocab.entity_ids(facts.bridges_B).astype(np.int32)
    return _batch_last(ex) if with_bridge and self.cfg.answer_at == "batch_last" else ex

  def train_examples(self, stage: int, ids_B, pad_hop: int = 0) -> dict:
    """Rows at the given positions of the endless stream: epoch e = ids in [e n, (e + 1) n) visits every
    training row once, in the order of the epoch's shuffle."""
    del stage, pad_hop  # every row is trained from the start, padded to two hops
    ex = take(self.train, np.array([self.order[int(i)] for i in ids_B], np.int64))
    return _batch_last(ex) if self.cfg.answer_at == "batch_last" else ex

  def monitor_splits(self, stage: int) -> dict:
    del stage
    return self.probes


def halves(probes: dict) -> dict:
  """Each held-out probe split (`test_*`) as two deterministic halves: its even rows keep the name (test), its odd
  rows become `val_*` (validation, for choices made after training); training splits stay whole."""
  out = {name: take(ex, slice(0, None, 2)) if name.startswith("test_") else ex for name, ex in probes.items()}
  out.update({val_split(name): take(ex, slice(1, None, 2)) for name, ex in probes.items()
              if name.startswith("test_") and len(ex["target"]) > 1})
  return out


def _batch_last(ex: dict) -> dict:
  """The official systematicity collate: rows right-padded to the longest of the group, the answer read at its
  last position (so an atomic fact grouped with any 2-hop fact is read at the pad after its relation token)."""
  return {**ex, "read_pos": np.full_like(ex["read_pos"], ex["hop"].max())}


def _read_composition(folder: str, n_probe: int):
  """(vocab, training Facts groups, probes) of an official-format task A folder. The bridge of a 2-hop probe is
  looked up among the atomic training facts (every atomic fact is trained in task A)."""
  from data_gen import io  # pylint: disable=import-outside-toplevel
  if not os.path.isdir(folder):
    raise ConfigError(f"data folder {folder!r} does not exist")
  try:
    vocab, train_rows, test_rows = io.read_dataset(folder)
    train = list(io.rows_to_facts(vocab, train_rows, "train.json").values())
    tests = io.rows_to_facts(vocab, test_rows, "test.json")
  except ValueError as e:
    raise ConfigError(str(e)) from None
  atomic = {(int(h), int(r[0])): int(t) for f in train if f.hop == 1
            for h, r, t in zip(f.heads_B, f.rels_BxK, f.tails_B)}
  probes = {}
  for (hop, name), f in tests.items():
    if name not in composition.SPLITS or hop not in (1, 2):
      raise ConfigError(f"{folder}/test.json: a {hop}-hop row of type {name!r}; expected 1- or 2-hop rows typed "
                        f"{', '.join(composition.SPLITS)}")
    if hop == 2:
      missing = [(h, r[0]) for h, r in zip(f.heads_B, f.rels_BxK) if (int(h), int(r[0])) not in atomic]
      if missing:
        raise ConfigError(f"{folder}: the first hop {missing[0]} of a {name!r} row is not an atomic training fact")
      f = Facts(f.heads_B, f.rels_BxK, f.tails_B, [atomic[int(h), int(r[0])] for h, r in zip(f.heads_B, f.rels_BxK)])
    probes[name] = f.take(slice(0, n_probe))
  return vocab, train, probes


def concat(parts: list[dict]) -> dict:
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def make_task(cfg: ChainDataConfig | CompositionDataConfig):
  cfg.validate()
  if isinstance(cfg, CompositionDataConfig):
    return CompositionTask(cfg)
  return ChainTask(cfg) if cfg.source == "generate" else JsonChainTask(cfg)


def stage_dataset(task, stage: int, batch_size: int, start_step: int) -> grain.MapDataset:
  """A MapDataset whose element j is this process's rows of the global batch at step start_step + j of a
  curriculum stage. Batches are padded to the curriculum's last stage: one shape across stages, one compile."""
  n_proc, proc = jax.process_count(), jax.process_index()
  local = batch_size // n_proc

  def make_batch(step):
    ids = step * batch_size + proc * local + np.arange(local)
    return task.train_examples(stage, ids, task.curriculum.last)

  return grain.MapDataset.range(start_step, _MAX_STEPS).map(make_batch)


def stage_iterator(task, stage: int, batch_size: int, start_step: int, prefetch: int = 2):
  """The grain iterator over stage_dataset, with background prefetch; get_state()/set_state() resume it."""
  options = grain.ReadOptions(num_threads=1 if prefetch else 0, prefetch_buffer_size=prefetch)
  return iter(stage_dataset(task, stage, batch_size, start_step).to_iter_dataset(options))
