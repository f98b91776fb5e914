"""The task registry: what a task declares, `register_task`, and `make_task` from a data config.

A task is one module that registers a factory `factory(cfg) -> Task` under a name (`register_task`), as model kinds
register (config.register_kind). The graph tasks of the paper register their own data configs (`graphs`); a task of
the length-generalization family reads `TaskConfig` and is chosen by `data.name`:

    @tasks.register_task("toy", difficulty="length")
    class Toy(tasks.DifficultyTask):
      ...
"""
from __future__ import annotations

import dataclasses
import importlib
import typing

import numpy as np

from looprec import data
from looprec.config import ConfigError
from looprec.selection import val_split


class Task(typing.Protocol):
  """What training and evaluation read from a task."""

  cfg: typing.Any  # its data config (a dataclass; part of the checkpoints' fingerprint)
  vocab: typing.Any  # .size: the number of token ids
  curriculum: data.Curriculum  # stages of training data (first == last: one stage)
  train_width: int  # tokens of a training batch (every stage is padded to it)
  deepest_eval_hop: int  # the largest difficulty with an evaluation split

  def train_examples(self, stage: int, ids_B, pad_hop: int = 0) -> dict:
    """Training examples with the given ids (a pure function of the ids: the grain stream resumes exactly):
    `tokens` (B x T int32, 0 = pad), `read_pos` (B, where the one answer token is read; B x K for a sequence
    answer), `target` (B; B x K), `hop` (B, the difficulty); optionally `targets` (B x T, 0 = none): an answer at
    every position, which the training loss then reads (`LoopedBase.loss`; a sequence answer needs it)."""

  def eval_split(self, difficulty: int) -> dict:
    """The held-out test examples at one difficulty, with `n_answers` (the size of the answer set)."""

  def val_split(self, difficulty: int) -> dict:
    """Validation examples at one difficulty, disjoint from eval_split's."""

  def monitor_splits(self, stage: int) -> dict:
    """split -> examples that training evaluates at a curriculum stage."""


@dataclasses.dataclass(frozen=True)
class Split:
  """An evaluation split: its name (`data.split_name`: the names the sweep, halting and summary read), its
  difficulty, and whether that difficulty is out of the training distribution."""

  name: str
  difficulty: int
  ood: bool


@dataclasses.dataclass(frozen=True)
class Entry:
  """A registered task: its factory, data config type, difficulty axis and how the answer is read."""

  factory: typing.Callable
  config: type
  difficulty: str  # hops | length | p
  answer: str  # token: one token at read_pos (B); sequence: one per slot at read_pos (B x K), all must be right


TASKS: dict[str, Entry] = {}
BUILT_IN = ("looprec.tasks.graphs", "looprec.tasks.parity", "looprec.tasks.p_hop", "looprec.tasks.copy",
            "looprec.tasks.addition")


def register_task(name: str, difficulty: str, config: type | None = None, answer: str = "token"):
  """Decorator: registers factory(cfg) -> Task as task `name` (config: its data config type; default TaskConfig,
  which selects it by data.name)."""
  if answer not in ("token", "sequence"):
    raise ValueError(f"task {name!r}: answer={answer!r} is not token or sequence")

  def register(factory):
    if name in TASKS and TASKS[name].factory is not factory:
      raise ValueError(f"task {name!r} is already registered (by {TASKS[name].factory.__qualname__})")
    TASKS[name] = Entry(factory, config or TaskConfig, difficulty, answer)
    return factory
  return register


def entry_of(cfg) -> tuple[str, Entry]:
  """(name, entry) of a data config: by data.name for a TaskConfig, else by its type."""
  for module in BUILT_IN:
    importlib.import_module(module)
  if isinstance(cfg, TaskConfig):
    if cfg.name not in TASKS or TASKS[cfg.name].config is not TaskConfig:
      names = sorted(n for n, e in TASKS.items() if e.config is TaskConfig)
      raise ConfigError(f"data.name={cfg.name!r} is not a registered task ({', '.join(names)})")
    return cfg.name, TASKS[cfg.name]
  for name, entry in TASKS.items():
    if isinstance(cfg, entry.config):
      return name, entry
  raise ConfigError(f"no task reads a data config of type {type(cfg).__name__}")


def make_task(cfg) -> Task:
  """The registered task a data config selects, its config validated."""
  return entry_of(cfg)[1].factory(cfg)


@dataclasses.dataclass(frozen=True)
class TaskConfig:
  """A task of the length-generalization family: train on difficulties train_min..train_max, evaluate the
  in-distribution ones and the out-of-distribution `ood` ones."""

  name: str = "parity"  # a task registered with this config (parity | p_hop | ...)
  seed: int = 0
  train_min: int = 1
  train_max: int = 8
  ood: str = ""  # comma-separated OOD difficulties, each > train_max; "" = 2 and 3 times train_max
  n_eval: int = 256  # examples per evaluation split
  seq_len: int = 32  # the longest sequence, in tokens: bounds the difficulties
  n_symbols: int = 4  # p_hop: the alphabet size
  context: int = 32  # p_hop: the length of the sequence hopped through
  every_position: bool = True  # p_hop: supervise hop_p at every symbol in training (False: the answer token only)
  running_parity: bool = False  # parity: also supervise the parity of the bits so far at every bit in training
  curriculum_from: int = 0  # > 0: train on train_min..curriculum_from first, one difficulty more at each pass
  curriculum_threshold: float = 0.95  # a stage passes when its deepest difficulty's accuracy exceeds this

  def ood_difficulties(self) -> list[int]:
    try:
      values = [int(v) for v in self.ood.split(",") if v.strip()]
    except ValueError:
      raise ConfigError(f"data.ood={self.ood!r} is not a comma-separated list of integers") from None
    return sorted(set(values)) if values else [2 * self.train_max, 3 * self.train_max]

  def validate(self):
    """The task's checks (`DifficultyTask.__init__`: data.name, the ranges, seq_len)."""
    make_task(self)

  def check(self, capacity: int):
    """Checks against capacity, the largest difficulty seq_len holds (the task's)."""
    if self.running_parity and self.name != "parity":
      raise ConfigError(f"data.running_parity=true is read by data.name=parity only, not {self.name}")
    if not 1 <= self.train_min <= self.train_max:
      raise ConfigError(f"data.train_min={self.train_min} and data.train_max={self.train_max} need 1 <= min <= max")
    inside = [d for d in self.ood_difficulties() if d <= self.train_max]
    if inside:
      raise ConfigError(f"data.ood={self.ood!r}: difficulty {inside[0]} is inside the training range "
                        f"(data.train_max={self.train_max})")
    deepest = self.ood_difficulties()[-1]
    if deepest > capacity:
      raise ConfigError(f"data.seq_len={self.seq_len} holds difficulties up to {capacity} for data.name="
                        f"{self.name}, not {deepest}")
    if self.n_eval < 1:
      raise ConfigError(f"data.n_eval={self.n_eval} must be >= 1")
    if self.curriculum_from and not self.train_min <= self.curriculum_from <= self.train_max:
      raise ConfigError(f"data.curriculum_from={self.curriculum_from} must be 0 (none) or within data.train_min.."
                        f"data.train_max ({self.train_min}..{self.train_max})")
    if self.curriculum_from and self.curriculum_threshold >= 1.0:
      raise ConfigError(f"data.curriculum_threshold={self.curriculum_threshold} must be < 1: an accuracy never "
                        "exceeds it")


@dataclasses.dataclass(frozen=True)
class SimpleVocab:
  """Token ids 0 (pad) .. size - 1, with names for printing."""

  tokens: tuple

  @property
  def size(self) -> int:
    return len(self.tokens)


class DifficultyTask:
  """The shared part of a TaskConfig task: the curriculum, the stream and the splits. A subclass sets
  `vocab` and `n_answers`, and defines `capacity(cfg)` (the largest difficulty seq_len holds), `width(d)` (tokens
  of a difficulty-d example) and `examples(rng, difficulty_B)`; a task whose answer is a sequence also
  `answer_length(d)` (its slots at difficulty d)."""

  def __init__(self, cfg: TaskConfig):
    cfg.check(self.capacity(cfg))
    self.cfg = cfg
    self.curriculum = data.Curriculum(cfg.curriculum_from or cfg.train_max, cfg.train_max, cfg.curriculum_threshold)

  @property
  def train_width(self) -> int:
    return self.width(self.cfg.train_max)

  @property
  def deepest_eval_hop(self) -> int:
    return self.cfg.ood_difficulties()[-1]

  def train_examples(self, stage: int, ids_B, pad_hop: int = 0) -> dict:
    """Difficulties uniform in train_min..stage (the curriculum's stage; train_max without one), drawn from a
    generator seeded by the batch's ids; every stage padded to train_max."""
    del pad_hop  # always train_max
    ids_B = np.asarray(ids_B, np.int64)
    rng = np.random.default_rng([self.cfg.seed, 0, int(ids_B[0]), len(ids_B)])
    d_B = rng.integers(self.cfg.train_min, stage + 1, len(ids_B))
    return self.padded(self.examples(rng, d_B), self.cfg.train_max)

  def _split(self, difficulty: int, salt: int) -> dict:
    if difficulty > self.capacity(self.cfg):
      raise ConfigError(f"difficulty {difficulty} needs a longer data.seq_len (at most {self.capacity(self.cfg)})")
    rng = np.random.default_rng([self.cfg.seed, salt, difficulty])
    ex = self.examples(rng, np.full(self.cfg.n_eval, difficulty))
    return {**self.padded(ex, difficulty), "n_answers": np.full(self.cfg.n_eval, self.n_answers, np.int32)}

  def eval_split(self, difficulty: int) -> dict:
    return self._split(difficulty, 1)

  def val_split(self, difficulty: int) -> dict:
    return self._split(difficulty, 2)

  def splits(self) -> list[Split]:
    """The evaluation splits: every trained difficulty (in distribution), then the OOD ones."""
    ids = [Split(data.split_name(d), d, False) for d in range(self.cfg.train_min, self.cfg.train_max + 1)]
    return ids + [Split(data.split_name(d), d, True) for d in self.cfg.ood_difficulties()]

  def monitor_splits(self, stage: int) -> dict:
    del stage
    return {s.name: self.eval_split(s.difficulty) for s in self.splits() if not s.ood}

  def labelled(self) -> dict:
    """split name -> examples of every test split and its validation split."""
    out = {s.name: self.eval_split(s.difficulty) for s in self.splits()}
    return {**out, **{val_split(s.name): self.val_split(s.difficulty) for s in self.splits()}}

  def padded(self, ex: dict, difficulty: int) -> dict:
    """The examples with `tokens` (and `targets`, where the task supervises every position) right-padded to the
    width of a difficulty, and a sequence answer's slots (`read_pos`, `target` B x K) to its `answer_length`:
    padding slots repeat the last position, with target 0 (`models.answer_correct` counts them right)."""
    out, width = dict(ex), self.width(difficulty)
    for key in ("tokens", "targets"):
      if key in ex:
        out[key] = np.zeros((len(ex["target"]), width), np.int32)
        out[key][:, :ex[key].shape[1]] = ex[key]
    if ex["read_pos"].ndim == 2:
      pad = self.answer_length(difficulty) - ex["read_pos"].shape[1]
      out["read_pos"] = np.pad(ex["read_pos"], ((0, 0), (0, pad)), mode="edge")
      out["target"] = np.pad(ex["target"], ((0, 0), (0, pad)))
    return out


def sequence_answer(tokens_BxT, start_B, answer_BxK, length_B) -> dict:
  """The examples of a task whose answer is a sequence: row b's first length[b] answer tokens are read at
  start[b], start[b] + 1, ... (`read_pos`, `target` B x K; slots past a row's length repeat its last position with
  target 0) and supervised there (`targets` B x T)."""
  length_Bx1 = np.asarray(length_B)[:, None]
  k_1xK = np.arange(answer_BxK.shape[1])[None, :]
  read_pos_BxK = np.asarray(start_B)[:, None] + np.minimum(k_1xK, length_Bx1 - 1)
  target_BxK = np.where(k_1xK < length_Bx1, answer_BxK, 0)
  rows, slots = np.nonzero(target_BxK)
  targets_BxT = np.zeros_like(tokens_BxT)
  targets_BxT[rows, read_pos_BxK[rows, slots]] = target_BxK[rows, slots]
  return {"tokens": tokens_BxT.astype(np.int32), "read_pos": read_pos_BxK.astype(np.int32),
          "target": target_BxK.astype(np.int32), "targets": targets_BxT.astype(np.int32)}
