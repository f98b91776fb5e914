"""Typed configuration: dataclasses for model / data / train / eval, and `a.b=c` overrides.

An experiment config is a tree of dataclasses (and dicts of them). `override(cfg, ["train.steps=500"])`
walks the dotted path, parses the value as the type of the field it replaces and returns a new config;
an unknown key or an ill-typed value raises ConfigError naming it.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import re
import sys
import typing


class ConfigError(ValueError):
  """A bad configuration value; the message is one line naming the culprit."""


def choices(value, valid) -> str:
  """The valid values as `a, b, c`, the closest matches to value first (difflib), for an "unknown X" error."""
  valid = [str(v) for v in valid]
  close = difflib.get_close_matches(str(value), valid, n=len(valid), cutoff=0.6)
  return ", ".join(close + [v for v in valid if v not in close])


def one_of(path: str, value, valid) -> str:
  """The message `path='value' is not one of a, b, c` (closest first)."""
  return f"{path}={value!r} is not one of {choices(value, valid)}"


@dataclasses.dataclass(frozen=True)
class Recurrence:
  """How many loops a training batch runs: fixed R, R = clip(Poisson(lam), low, high) per batch, or (difficulty)
  R per example = its difficulty (the batch's `hop`: a length, p), at most `loops` (Fan et al. 2024's R = n)."""

  schedule: str  # "fixed" | "dynamic" | "difficulty"
  loops: int = 1  # fixed R; difficulty: the largest R
  lam: float = 4.0
  low: int = 2
  high: int = 8

  @classmethod
  def parse(cls, spec: str) -> "Recurrence":
    """Parses "fixed:R", "dynamic:lam,low,high" or "difficulty:R_max" (the results.json spelling)."""
    m = (re.fullmatch(r"(fixed|difficulty):(\d+)", spec)
         or re.fullmatch(r"dynamic:(\d+(?:\.\d*)?),(\d+),(\d+)", spec))
    if m is None:
      raise ConfigError(f"recurrence {spec!r} is neither 'fixed:R', 'dynamic:lam,low,high' nor 'difficulty:R_max'")
    if not spec.startswith("dynamic"):
      rec = cls(m.group(1), loops=int(m.group(2)))
    else:
      rec = cls("dynamic", lam=float(m.group(1)), low=int(m.group(2)), high=int(m.group(3)))
    if rec.min_loops < 1 or rec.min_loops > rec.max_loops:
      raise ConfigError(f"recurrence {spec!r}: loop counts must satisfy 1 <= low <= high (R >= 1)")
    return rec

  @property
  def min_loops(self) -> int:
    return {"fixed": self.loops, "difficulty": 1}.get(self.schedule, self.low)

  @property
  def max_loops(self) -> int:
    return self.high if self.schedule == "dynamic" else self.loops

  @property
  def mean_loops(self) -> float:
    """Expected R, for sizing a vanilla model of the same unrolled depth (difficulty: the largest)."""
    if self.schedule != "dynamic":
      return float(self.loops)
    import numpy as np  # pylint: disable=import-outside-toplevel
    draws = np.clip(np.random.default_rng(0).poisson(self.lam, 200_000), self.low, self.high)
    return float(draws.mean())

  def __str__(self) -> str:
    if self.schedule != "dynamic":
      return f"{self.schedule}:{self.loops}"
    return f"dynamic:{self.lam:g},{self.low},{self.high}"


@dataclasses.dataclass(frozen=True)
class KindOptions:
  """A model kind's own hyperparameters. A kind subclasses it in its own module (a frozen dataclass whose fields
  have defaults; each is read and set flat: `cfg.n_streams`, `model.n_streams=2`), checks them in `validate`, and
  registers it with its model class (`register_kind`). The base class is the options of a kind that has none."""

  # the kind's loss reads every loop, so it needs a static loop count: train.loop_programs=one is refused
  reads_every_loop: typing.ClassVar[bool] = False

  def validate(self, cfg: ModelConfig):
    """ConfigError, one line naming the key, for a bad value; cfg is the whole model config."""
    del cfg


@dataclasses.dataclass(frozen=True)
class Kind:
  """A registered model kind: its options (a KindOptions subclass) and its model class, `model(cfg, vocab_size)`."""

  options: type
  model: type


# model.kind -> Kind, filled by each kind's module as it is imported (looprec.models imports the built-in ones); the
# first registered is the default kind
KINDS: dict[str, Kind] = {}


def register_kind(name: str, options: type = KindOptions):
  """Class decorator: registers the decorated model class as `model.kind=name`, with its options class."""
  def register(model):
    if name in KINDS and KINDS[name].model is not model:
      raise ValueError(f"model.kind={name!r} is already registered (by {KINDS[name].model.__qualname__})")
    KINDS[name] = Kind(options, model)
    return model
  return register


def _option_names(options: type) -> list[str]:
  return [f.name for f in dataclasses.fields(options)]


def _option_defaults(key: str) -> dict:
  """kind -> the default of option `key`, for every registered kind whose options have it."""
  return {name: f.default for name, kind in KINDS.items() for f in dataclasses.fields(kind.options) if f.name == key}


POS_EMBS = ("learned", "sinusoidal", "rope", "none")
INJECTIONS = ("none", "add", "adapter")


@dataclasses.dataclass(frozen=True, init=False)
class ModelConfig:
  """The recurrent-depth transformer: embed -> (block of n_layers) x R -> final norm -> tied head. The fields every
  kind shares are here; a kind's own hyperparameters are `options` (its registered KindOptions), given, read and
  saved flat beside these fields, as `n_streams=2` rather than `options.n_streams`."""

  kind: str = ""  # the model kind, a name registered in KINDS ("" = the first registered)
  d_model: int = 64
  n_heads: int = 4
  n_layers: int = 1  # L, layers in the looped block
  d_ff: int = 0  # 0 = 4 * d_model
  pos_emb: str = "rope"  # learned | sinusoidal | rope | none
  max_positions: int = 64  # table size for learned positions
  attn_window: int = 0  # 0 = full causal attention; w = each query sees itself and w-1 tokens before
  out_init_scale: float = 1.0  # std multiplier of attention/MLP output projections; 0 = zero init
  out_init_scaled: bool = True  # output projections' std also divided by sqrt(2 n_layers) (GPT-2 trainers)
  init_std: float = 0.02  # std of the layers' weight matrices
  embed_init_std: float = 0.02  # std of the token (and learned position) embeddings; nn.Embedding's is 1.0
  ln_eps: float = 1e-6  # LayerNorm epsilon (Flax's default; PyTorch's and GPT-2's is 1e-5)
  injection: str = "add"  # none | add (embedding added before every loop after the first) | adapter
  embed_dropout: float = 0.0  # on the embeddings entering the loop (GPT-2 embd_pdrop)
  attn_dropout: float = 0.0  # on the attention probabilities (attn_pdrop)
  resid_dropout: float = 0.0  # on each sublayer's output before the residual add (resid_pdrop)
  dtype: str = "float32"  # compute dtype: float32 | bfloat16 (params stay float32)
  # compute dtype of every evaluation (curriculum gate, R sweep, halting, margins, lens); "" = dtype. The official
  # loop evaluates outside its bf16 autocast, in float32
  eval_dtype: str = ""
  attention: str = "einsum"  # einsum (softmax in float32, dropout on probs) | dot_product (jax.nn.dot_product_attention)
  options: KindOptions = KindOptions()  # the kind's own hyperparameters (KINDS[kind].options)
  unowned: tuple = ()  # sorted (key, value): other kinds' options set here to non-defaults; validate refuses them

  # a key of older run folders -> the fields that replaced it (from_dict reads old config.json files)
  RENAMED = {"dropout": ("embed_dropout", "attn_dropout", "resid_dropout")}

  def __init__(self, **values):
    """The fields above, and any registered kind's options flat (`n_streams=2`). When the kind changes, the options
    the new kind has carry over and the others are dropped; an option of another kind, given at a value other than
    its default, is kept in `unowned` (a later change of kind may own it; validate refuses it)."""
    for f in dataclasses.fields(self):
      object.__setattr__(self, f.name, values.pop(f.name, f.default))
    object.__setattr__(self, "kind", self.kind or next(iter(KINDS), ""))
    options = KINDS[self.kind].options if self.kind in KINDS else KindOptions
    own = _option_names(options)
    given = {**{k: getattr(self.options, k) for k in _option_names(type(self.options)) if k in own},
             **dict(self.unowned), **values}
    for key, value in given.items():
      if key not in own and not _option_defaults(key):
        raise TypeError(f"ModelConfig got an unexpected keyword argument {key!r}")
    object.__setattr__(self, "options", options(**{k: v for k, v in given.items() if k in own}))
    object.__setattr__(self, "unowned", tuple(sorted(
        (k, v) for k, v in given.items() if k not in own and v not in _option_defaults(k).values())))

  def __getattr__(self, name: str):
    """Options read flat, as `settable` has them: cfg.n_streams is cfg.options.n_streams; another kind's option is
    the value set here (which validate refuses) or its default, as when every kind's options were fields here."""
    values = self.settable() if "options" in self.__dict__ and not name.startswith("__") else {}
    if name not in values:
      raise AttributeError(f"ModelConfig has no attribute {name!r}")
    return values[name]

  def flat(self) -> dict:
    """The fields, the kind's options and any unowned ones in one flat dict (config.json's `model`)."""
    common = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("options", "unowned")}
    return {**common, **dataclasses.asdict(self.options), **dict(self.unowned)}

  def settable(self) -> dict:
    """Every key an override may set -> its value here, or for another kind's option its default (the first
    registered kind's that has it)."""
    others = {k: v for kind in reversed(KINDS.values()) for k, v in dataclasses.asdict(kind.options()).items()}
    return {**others, **self.flat()}

  def for_eval(self) -> "ModelConfig":
    """This config with its evaluation dtype as the compute dtype: the model that evaluates."""
    return dataclasses.replace(self, dtype=self.eval_dtype) if self.eval_dtype else self

  @property
  def any_dropout(self) -> bool:
    return bool(self.embed_dropout or self.attn_dropout or self.resid_dropout)

  def validate(self):
    _check(self.kind in KINDS, one_of("model.kind", self.kind, KINDS))
    _check(self.d_model % max(self.n_heads, 1) == 0 and self.n_heads >= 1,
           f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}")
    _check(self.n_layers >= 1, f"model.n_layers={self.n_layers} must be >= 1")
    _check(self.pos_emb in POS_EMBS, one_of("model.pos_emb", self.pos_emb, POS_EMBS))
    _check(self.pos_emb != "rope" or (self.d_model // self.n_heads) % 2 == 0,
           "model.pos_emb=rope needs an even head dimension")
    _check(self.injection in INJECTIONS, one_of("model.injection", self.injection, INJECTIONS))
    _check(self.attn_window >= 0, f"model.attn_window={self.attn_window} must be >= 0")
    for name in ("embed_dropout", "attn_dropout", "resid_dropout"):
      _check(0.0 <= getattr(self, name) < 1.0, f"model.{name}={getattr(self, name)} must be in [0, 1)")
    _check(self.init_std >= 0 and self.embed_init_std >= 0,
           f"model.init_std={self.init_std} and model.embed_init_std={self.embed_init_std} must be >= 0")
    _check(self.ln_eps > 0, f"model.ln_eps={self.ln_eps} must be > 0")
    _check(self.dtype in ("float32", "bfloat16"), one_of("model.dtype", self.dtype, ("float32", "bfloat16")))
    _check(self.eval_dtype in ("", "float32", "bfloat16"),
           one_of("model.eval_dtype", self.eval_dtype, ("float32", "bfloat16", "")) + " ('' = model.dtype)")
    _check(self.attention in ("einsum", "dot_product"), one_of("model.attention", self.attention, ("einsum", "dot_product")))
    _check(self.attention == "einsum" or self.attn_dropout == 0.0,
           "model.attention=dot_product has no dropout on attention probabilities: set model.attn_dropout=0 or use einsum")
    for key, value in self.unowned:
      raise ConfigError(f"model.{key}={value!r}: model.kind={self.kind!r} has no {key} (an option of "
                        f"{', '.join(_option_defaults(key))})")
    self.options.validate(self)


@dataclasses.dataclass(frozen=True)
class CurriculumConfig:
  """The hop curriculum of chain tasks: stage k trains on chains of <= k hops; the run moves to stage k + 1 when
  the held-out k-hop accuracy exceeds threshold."""

  first_hop: int = 2  # the first stage
  last_hop: int = 4  # the last stage: the trained depth k
  threshold: float = 0.95
  check: str = "steps"  # steps: the gate is checked every train.eval_every steps | epoch: once per pass over the
  #                       stage's training rows, ceil(rows / batch) steps (the official loop checks after each epoch)
  min_epochs: int = 0  # forced grokking: no stage ends before this many epochs since training began (check=epoch);
  #                      the paper preset's 1001 is inferred from the reference checkpoints, not a documented default

  def validate(self):
    _check(1 <= self.first_hop <= self.last_hop, f"data.curriculum.first_hop={self.first_hop} and "
           f"data.curriculum.last_hop={self.last_hop} need 1 <= first <= last")
    _check(self.check in ("steps", "epoch"), f"data.curriculum.check={self.check!r} is not steps or epoch")
    _check(self.min_epochs >= 0 and (self.check == "epoch" or not self.min_epochs),
           f"data.curriculum.min_epochs={self.min_epochs} must be >= 0 and needs data.curriculum.check=epoch")


@dataclasses.dataclass(frozen=True)
class ChainDataConfig:
  """k-hop chains over a permutation graph (RECIPE task B), generated on the fly or read from JSON."""

  source: str = "generate"  # "generate" or the path of an official-format JSON folder
  seed: int = 0
  n_entities: int = 20
  n_relations: int = 4
  test_fraction: float = 0.1  # share of each hop's chain space held out (never trained)
  train_chains_per_hop: int = 0  # 0 = a fresh chain per example; n = a fixed pool of n chains per hop
  hop_weights: str = "uniform"  # uniform over the stage's hops | pool (proportional to pool sizes)
  n_eval: int = 256  # examples per evaluation split
  seq_len: int = 16  # padded sequence length
  answer_at: str = "last_input"  # last_input (pred_pos=inp_len) | next (a pad position after the input)
  curriculum: CurriculumConfig = CurriculumConfig()

  def validate(self):
    self.curriculum.validate()
    _check(self.curriculum.check != "epoch" or self.train_chains_per_hop or self.source != "generate",
           "data.curriculum.check=epoch needs a finite training set: data.train_chains_per_hop > 0 or a data folder")
    _check(self.curriculum.last_hop <= self.fitting_hops(), f"data.curriculum.last_hop={self.curriculum.last_hop} "
           f"needs more than data.seq_len={self.seq_len} allows ({self.fitting_hops()} hops)")
    _check(0.0 < self.test_fraction < 1.0, f"data.test_fraction={self.test_fraction} must be in (0, 1)")
    _check(self.answer_at in ("last_input", "next"),
           f"data.answer_at={self.answer_at!r} is not last_input or next")
    _check(self.n_entities >= 2 and self.n_relations >= 1,
           f"data needs n_entities >= 2 and n_relations >= 1, got {self.n_entities}, {self.n_relations}")
    _check(self.hop_weights in ("uniform", "pool"), f"data.hop_weights={self.hop_weights!r} is not uniform or pool")
    _check(self.n_eval >= 1, f"data.n_eval={self.n_eval} must be >= 1")
    _check(self.train_chains_per_hop >= 0, f"data.train_chains_per_hop={self.train_chains_per_hop} must be >= 0")

  def fitting_hops(self) -> int:
    """The deepest chain that fits in seq_len."""
    return self.seq_len - 1 - (self.answer_at == "next")


@dataclasses.dataclass(frozen=True)
class CompositionDataConfig:
  """2-hop composition over a random graph with ID/OOD atomic facts (RECIPE task A), generated or from JSON."""

  source: str = "generate"  # "generate" or the path of an official-format JSON folder
  seed: int = 0
  n_entities: int = 100
  n_relations: int = 20
  out_degree: int = 10  # distinct relations per entity, each to a uniformly random tail
  ood_ratio: float = 0.1  # share of atomic facts that are OOD (trained, never composed in training)
  phi: float = 7.2  # training inferred facts = phi x ID atomic facts
  iid_test_prob: float = 0.005  # share of ID 2-hop paths held out as test_inferred_iid
  n_probe: int = 3000  # examples per probe split
  atomic_repeats: int = 1  # each atomic fact appears this many times per training epoch (RECIPE: 1)
  # last_input: at each row's last input token | next: a pad after it | batch_last: the official collate (rows
  # padded to the batch's longest, the answer read at the last position: an atomic fact in a batch holding any
  # 2-hop row is read at a pad after its relation; a probe split is one such batch group)
  answer_at: str = "last_input"

  def validate(self):
    _check(self.n_entities >= 2, f"data.n_entities={self.n_entities} must be >= 2")
    _check(1 <= self.out_degree <= self.n_relations,
           f"data.out_degree={self.out_degree} must be in 1..data.n_relations={self.n_relations}")
    _check(0.0 < self.ood_ratio < 1.0, f"data.ood_ratio={self.ood_ratio} must be in (0, 1)")
    _check(0.0 < self.iid_test_prob < 1.0, f"data.iid_test_prob={self.iid_test_prob} must be in (0, 1)")
    _check(self.phi > 0, f"data.phi={self.phi} must be > 0")
    _check(self.n_probe >= 1, f"data.n_probe={self.n_probe} must be >= 1")
    _check(self.atomic_repeats >= 1, f"data.atomic_repeats={self.atomic_repeats} must be >= 1")
    _check(self.answer_at in ("last_input", "next", "batch_last"),
           f"data.answer_at={self.answer_at!r} is not last_input, next or batch_last")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps: int = 1000  # total steps over all curriculum stages
  max_minutes: float = 0.0  # wall-time budget; 0 = none
  batch_size: int = 64
  lr: float = 3e-3
  warmup_steps: int = 200
  decay_steps: int = 0  # linear decay to 0 over this many steps of a stage; 0 = no decay after warmup
  weight_decay: float = 0.01
  weight_decay_on: str = "matrices"  # matrices (GPT-2 trainers) | all (torch.optim.AdamW over every parameter)
  b1: float = 0.9
  b2: float = 0.999
  grad_clip: float = 1.0  # 0 = off
  label_smoothing: float = 0.0
  grokfast_alpha: float = 0.0  # Grokfast-EMA gradient filter g + lambda * EMA_alpha(g); 0 = off
  grokfast_lambda: float = 2.0
  restart_optimizer: bool = True  # fresh optimizer state and schedule at each curriculum stage (the recipe)
  eval_every: int = 250
  eval_loops: int = 0  # loops of the evaluations during training; 0 = the largest training R
  checkpoint_every: int = 500
  keep_checkpoints: int = 2
  log_every: int = 25
  debug_nan_step: int = -1  # a debug fault: the gradients of this step are NaN (-1 = off; its own compile)
  unroll: int = 1  # loops per iteration of the depth scan (1 = rolled; >= R = unrolled: faster, longer compile)
  remat: str = "none"  # per-loop rematerialisation: none | loop (recompute each loop) | dots (keep its matmuls)
  backprop_loops: int = 0  # k > 0: gradients through the last k loops only (earlier ones stop_gradient); 0 = all
  # per_r: one step per R, compiled when first drawn | ahead: the same steps, compiled at the start in background
  # threads | one: one step to R_max whose scan skips the loops before the last R
  loop_programs: str = "per_r"
  # optimizer steps per compiled call, a scan over stacked batches, bitwise the same steps (on the 2-core CPU measured
  # slower than 1 at the cpu presets' sizes: docs/decisions.md)
  steps_per_call: int = 1
  fsdp: int = 1  # N > 1: params and optimizer state split over a mesh axis of N devices (the data axis gets the rest)
  # The official loop's behaviour (docs/reproducing.md, "What the official loop does"), each off by default:
  dropout_until_check: bool = False  # dropout only from a stage's start to its first curriculum check
  gate: str = "loops"  # the curriculum gate of a dynamic-R model: loops (accuracy after eval_loops) | kl_entropy
  stage_checkpoints: bool = False  # a checkpoint at every curriculum-stage pass, never deleted
  stop_after_last_stage: bool = False  # training ends when the last stage passes its gate
  stage_lr_gamma: float = 1.0  # stage k trains at lr * gamma^(k - first_hop), at least stage_lr_min (1 = off)
  stage_lr_min: float = 0.0

  def validate(self):
    for name in ("steps", "batch_size", "eval_every", "checkpoint_every", "keep_checkpoints", "log_every"):
      _check(getattr(self, name) >= 1, f"train.{name}={getattr(self, name)} must be >= 1")
    _check(self.lr > 0, f"train.lr={self.lr} must be > 0")
    _check(self.weight_decay_on in ("matrices", "all"),
           f"train.weight_decay_on={self.weight_decay_on!r} is not matrices or all")
    for name in ("warmup_steps", "decay_steps", "max_minutes", "grad_clip", "weight_decay", "eval_loops"):
      _check(getattr(self, name) >= 0, f"train.{name}={getattr(self, name)} must be >= 0")
    _check(not self.decay_steps or self.decay_steps > self.warmup_steps,
           f"train.decay_steps={self.decay_steps} must exceed train.warmup_steps={self.warmup_steps} (or be 0)")
    _check(0.0 <= self.label_smoothing < 1.0, f"train.label_smoothing={self.label_smoothing} must be in [0, 1)")
    _check(0.0 <= self.grokfast_alpha < 1.0, f"train.grokfast_alpha={self.grokfast_alpha} must be in [0, 1)")
    _check(self.grokfast_lambda >= 0, f"train.grokfast_lambda={self.grokfast_lambda} must be >= 0")
    self.check_depth(self.unroll, self.remat, self.backprop_loops)
    _check(self.loop_programs in ("per_r", "ahead", "one"),
           one_of("train.loop_programs", self.loop_programs, ("per_r", "ahead", "one")))
    _check(self.steps_per_call >= 1, f"train.steps_per_call={self.steps_per_call} must be >= 1")
    _check(self.fsdp >= 1, f"train.fsdp={self.fsdp} must be >= 1 (1 = parameters replicated)")
    _check(self.gate in ("loops", "kl_entropy"), one_of("train.gate", self.gate, ("loops", "kl_entropy")))
    _check(0 < self.stage_lr_gamma <= 1 and self.stage_lr_min >= 0,
           f"train.stage_lr_gamma={self.stage_lr_gamma} must be in (0, 1] and train.stage_lr_min="
           f"{self.stage_lr_min} >= 0")

  @staticmethod
  def check_depth(unroll: int, remat: str, backprop_loops: int):
    """The depth-scan options, here and where `loop.Scan` is built from them."""
    _check(unroll >= 1, f"train.unroll={unroll} must be >= 1")
    _check(remat in ("none", "loop", "dots"), one_of("train.remat", remat, ("none", "loop", "dots")))
    _check(backprop_loops >= 0, f"train.backprop_loops={backprop_loops} must be >= 0")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  max_hop: int = 10  # evaluate hops 1..max_hop
  max_loops: int = 16  # sweep R = 1..max_loops
  batch_size: int = 256

  def validate(self):
    _check(self.max_hop >= 1, f"eval.max_hop={self.max_hop} must be >= 1")
    _check(self.max_loops >= 1, f"eval.max_loops={self.max_loops} must be >= 1 (R >= 1)")
    _check(self.batch_size >= 1, f"eval.batch_size={self.batch_size} must be >= 1")


@dataclasses.dataclass(frozen=True)
class ModelRun:
  """One model an experiment trains: its depth, recurrence and step budget (0 = train.steps)."""

  n_layers: int = 1
  recurrence: str = "dynamic:4,2,8"
  steps: int = 0
  model: str = ""  # this model's changes to the shared model config, "key=value,..." (e.g. "kind=NAME,OPTION=2")

  def model_overrides(self) -> list[str]:
    return [item for item in self.model.split(",") if item]

  @property
  def rec(self) -> Recurrence:
    """The parsed recurrence."""
    return Recurrence.parse(self.recurrence)

  def validate(self, name: str):
    _check(self.n_layers >= 1, f"models.{name}.n_layers={self.n_layers} must be >= 1")
    try:
      Recurrence.parse(self.recurrence)
    except ConfigError as e:
      raise ConfigError(f"models.{name}.{e}") from None


def validate_experiment(cfg):
  """The checks every experiment config shares: data, model, train and eval are each valid, and every model
  trained has a valid recurrence whose largest R the evaluation covers."""
  for part in (cfg.data, cfg.model, cfg.train, cfg.eval):
    part.validate()
  _check(bool(cfg.models), "the experiment trains no models")
  for name, run in cfg.models.items():
    run.validate(name)
    try:
      cfg.model_cfg(name).validate()
    except ConfigError as e:
      raise ConfigError(f"models.{name}: {e}") from None
    model_cfg = cfg.model_cfg(name)
    _check(cfg.train.loop_programs != "one" or not model_cfg.options.reads_every_loop,
           f"train.loop_programs={cfg.train.loop_programs}: models.{name} (model.kind={model_cfg.kind}) reads every "
           "loop; use per_r or ahead")
    _check(run.rec.max_loops <= cfg.eval.max_loops,
           f"eval.max_loops={cfg.eval.max_loops} is below models.{name}'s largest training R")


# ---------------------------------------------------------------- overrides and serialisation


def _check(ok: bool, message: str):
  if not ok:
    raise ConfigError(message)


def _parse_value(text: str, like, path: str):
  kind = type(like)
  try:
    if kind is bool:
      if text.lower() not in ("true", "false", "1", "0"):
        raise ValueError
      return text.lower() in ("true", "1")
    if kind is int:
      return int(text)
    if kind is float:
      return float(text)
    if kind is str:
      return text
  except ValueError:
    raise ConfigError(f"override {path}={text!r}: expected {kind.__name__}") from None
  raise ConfigError(f"override {path}: cannot set a {kind.__name__} from the command line")


def _unknown_key(path: str, keys: list[str], valid) -> ConfigError:
  """`unknown config key 'a.b'` with the keys valid at that level (closest first)."""
  prefix = "".join(f"{p}." for p in path.split(".")[:-len(keys)])
  return ConfigError(f"unknown config key {path!r} (have " +
                     (", ".join(prefix + k for k in choices(keys[0], valid).split(", ")) if valid else "none") + ")")


def _replace(node, keys: list[str], text: str, path: str):
  key, rest = keys[0], keys[1:]
  if dataclasses.is_dataclass(node):
    values = node.settable() if isinstance(node, ModelConfig) else {f.name: getattr(node, f.name)
                                                                     for f in dataclasses.fields(node)}
  elif isinstance(node, dict):
    values = node
  else:
    raise ConfigError(f"unknown config key {path!r} ({path.removesuffix('.' + '.'.join(keys))} is a value, not a "
                      "group of keys)")
  if key not in values:
    raise _unknown_key(path, keys, values)
  new = _replace(values[key], rest, text, path) if rest else _parse_value(text, values[key], path)
  return dataclasses.replace(node, **{key: new}) if dataclasses.is_dataclass(node) else {**node, key: new}


def override(cfg, assignments: typing.Iterable[str]):
  """Returns cfg with each `dotted.path=value` applied, values typed like the fields they replace; a key given
  twice is a ConfigError (which of the two was meant is not for the code to guess)."""
  assignments = list(assignments)
  seen = {}
  for item in assignments:
    path, sep, text = item.partition("=")
    if not sep or not path:
      raise ConfigError(f"override {item!r} is not of the form key=value")
    if path in seen:
      raise ConfigError(f"override key {path!r} given twice ({seen[path]} and {item}); give it once")
    seen[path] = item
    cfg = _replace(cfg, path.split("."), text, path)
  return cfg


def to_dict(cfg) -> dict:
  """Plain JSON-able dict of a config tree (a model config flat: ModelConfig.flat)."""
  if isinstance(cfg, ModelConfig):
    return cfg.flat()
  if dataclasses.is_dataclass(cfg):
    return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
  if isinstance(cfg, dict):
    return {k: to_dict(v) for k, v in cfg.items()}
  return cfg


def from_dict(cls, data: dict, filled: list | None = None, prefix: str = ""):
  """Inverse of to_dict for a dataclass type whose fields are dataclasses, dicts of them, or scalars. A key
  the type does not have is a ConfigError; a field missing from data takes its default and its dotted path
  is appended to `filled` (an older run folder, saved before the field existed)."""
  if not isinstance(data, dict):
    raise ConfigError(f"config {prefix.rstrip('.') or 'root'}: expected a mapping, got {data!r}")
  for old, new in getattr(cls, "RENAMED", {}).items():
    if old in data:
      data = {**{k: data[old] for k in new}, **{k: v for k, v in data.items() if k != old}}
  if cls is ModelConfig:
    return _model_from_dict(data, filled, prefix)
  hints = typing.get_type_hints(cls)
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = [k for k in data if k not in fields]
  if unknown:
    raise ConfigError(f"unknown config key {prefix + unknown[0]!r}")
  kwargs = {}
  for f in dataclasses.fields(cls):
    if f.name not in data:
      if filled is not None:
        filled.append(prefix + f.name)
      continue
    hint, value = hints[f.name], data[f.name]
    if dataclasses.is_dataclass(hint):
      value = from_dict(hint, value, filled, f"{prefix}{f.name}.")
    elif typing.get_origin(hint) is dict:
      item_type = typing.get_args(hint)[1]
      if dataclasses.is_dataclass(item_type):
        value = {k: from_dict(item_type, v, filled, f"{prefix}{f.name}.{k}.") for k, v in value.items()}
    kwargs[f.name] = value
  return cls(**kwargs)


def _model_from_dict(data: dict, filled: list | None, prefix: str) -> ModelConfig:
  """from_dict of a flat model config: to_dict's (the kind's options only) or an older run's (every kind's)."""
  kind = data.get("kind") or next(iter(KINDS), "")
  keys = [f.name for f in dataclasses.fields(ModelConfig) if f.name not in ("options", "unowned")]
  keys += _option_names(KINDS[kind].options) if kind in KINDS else []
  unknown = [k for k in data if k not in keys and not _option_defaults(k)]
  if unknown:
    raise ConfigError(f"unknown config key {prefix + unknown[0]!r}")
  if filled is not None:
    filled.extend(prefix + k for k in keys if k not in data)
  return ModelConfig(**data)


PROSE = ("deviations", "reasons")  # config fields that describe a preset and change no result


def from_saved(cls, data: dict, where: str):
  """from_dict of a saved config, saying on stderr (one line) which missing settings took their defaults (a
  missing prose field is not worth a line)."""
  filled = []
  try:
    cfg = from_dict(cls, data, filled)
  except ConfigError as e:
    raise ConfigError(f"{where}: {e}") from None
  filled = [key for key in filled if key not in PROSE]
  if filled:
    print(f"note: {where} has no {', '.join(filled)}; using the defaults", file=sys.stderr)
  return cfg


def dumps(cfg) -> str:
  return json.dumps(to_dict(cfg), indent=2, sort_keys=True)
