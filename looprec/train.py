"""Training: the optimizer, the train state, the pure step and its compiled programs (`Programs`), and the
`Trainer` that runs them (recurrence schedule, hop curriculum, checkpoints with exact resume, tensorboard scalars,
progress bar). A run's stop request and evaluation listeners are per-run objects (`Hooks`)."""
from __future__ import annotations

from concurrent import futures
import contextlib
import contextvars
import dataclasses
import functools
import logging
import os
import signal
import sys
import time
import typing

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from tensorboardX import SummaryWriter

from looprec import checkpoint, data, eval as evaluation, halting, loop, sharding, throughput
from looprec.config import ConfigError, Recurrence, TrainConfig
from looprec.models import answer_correct

HEALTH = ("loss", "grad_norm", "update_norm", "param_norm")  # the quantities checked for NaN / Inf
HEALTHY = np.array([-1, 0], np.int32)  # TrainState.health before any non-finite step


def schedule(cfg: TrainConfig):
  """Linear warmup to lr, then constant (decay_steps = 0) or linear decay to 0 at decay_steps."""
  warmup = optax.linear_schedule(0.0, cfg.lr, max(cfg.warmup_steps, 1))
  after = (optax.linear_schedule(cfg.lr, 0.0, max(cfg.decay_steps - cfg.warmup_steps, 1)) if cfg.decay_steps
           else optax.constant_schedule(cfg.lr))
  return optax.join_schedules([warmup, after], [cfg.warmup_steps])


def grokfast_ema(alpha: float, lamb: float) -> optax.GradientTransformation:
  """Grokfast-EMA (Lee et al., 2024): g + lamb * EMA_alpha(g), amplifying the slow component of the gradients,
  which is reported to speed up grokking."""
  def init(params):
    return {"ema": jax.tree_util.tree_map(jnp.zeros_like, params)}

  def update(grads, state, params=None):
    del params
    ema = jax.tree_util.tree_map(lambda e, g: alpha * e + (1 - alpha) * g, state["ema"], grads)
    return jax.tree_util.tree_map(lambda g, e: g + lamb * e, grads, ema), {"ema": ema}

  return optax.GradientTransformation(init, update)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  """AdamW (decay on matrices only, as GPT-2 trainers do, or on every parameter, as torch.optim.AdamW over
  model.parameters() does) behind optional global-norm clipping and then an optional Grokfast filter (after the
  clipping, which would otherwise undo its amplification)."""
  decay_mask = None if cfg.weight_decay_on == "all" else (
      lambda params: jax.tree_util.tree_map(lambda p: p.ndim >= 2, params))
  adamw = optax.adamw(schedule(cfg), b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=decay_mask)
  parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip else []
  parts += [grokfast_ema(cfg.grokfast_alpha, cfg.grokfast_lambda)] if cfg.grokfast_alpha else []
  tx = optax.chain(*parts, adamw) if parts else adamw
  if cfg.stage_lr_gamma != 1.0:  # the stage's lr / lr, an optimizer-state leaf (saved, so a resume keeps it)
    tx = optax.chain(tx, optax.inject_hyperparams(optax.scale)(step_size=1.0))
  return tx


def stage_lr_factor(cfg: TrainConfig, stage: int, first: int) -> float:
  """Stage `stage`'s lr over train.lr: the official --use_lr_decay, lr_k = max(lr * gamma^(k - first), lr_min)
  (train_extrapolation.py, with its first stage k = 2); 1 when train.stage_lr_gamma = 1."""
  if cfg.stage_lr_gamma == 1.0:
    return 1.0
  return max(cfg.lr * cfg.stage_lr_gamma ** (stage - first), cfg.stage_lr_min) / cfg.lr


# ------------------------------------------------------------------ the train state and the pure step


@flax.struct.dataclass
class TrainState:
  """What a train step reads and returns. step: the step about to run (its dropout draws from fold_in(rng,
  step + 1)); health = [first step with a non-finite HEALTH quantity (-1: none), its index in HEALTH], kept on the
  device and read only where the host syncs anyway. Checkpoints hold `saved()`: params and optimizer state."""

  params: typing.Any
  opt_state: typing.Any
  step: jax.Array  # int32 scalar
  rng: jax.Array  # the run's key
  health: jax.Array  # int32[2]

  def saved(self) -> dict:
    return {"params": self.params, "opt_state": self.opt_state}


def fresh_state(saved: dict, key, mesh, step: int = 0) -> TrainState:
  """The TrainState of `saved` ({"params", "opt_state"}, laid out on the mesh) at `step`, healthy."""
  counters = jax.device_put((np.int32(step), key, HEALTHY), sharding.replicated(mesh), may_alias=False)
  return TrainState(saved["params"], saved["opt_state"], *counters)


def laid_out(fn, mesh, *args):
  """fn(*args), a params or optimizer-state tree, in its `sharding.state_shardings` layout on the mesh. With an
  `fsdp` axis it comes from a jitted program whose outputs are created split, so no leaf is ever whole on one
  device; without one it is computed op by op and replicated, bitwise as before the axis existed (under jit the
  normal draws of the init differ in the last bit)."""
  if "fsdp" not in mesh.axis_names:
    return jax.device_put(fn(*args), sharding.replicated(mesh))
  return jax.jit(fn, out_shardings=sharding.state_shardings(jax.eval_shape(fn, *args), mesh))(*args)


def init_state(model, tx, key, seq_len: int, mesh) -> TrainState:
  """The TrainState of a fresh model (params drawn from fold_in(key, 0)), laid out on the mesh."""
  def init(rng):
    params = model.init(rng, seq_len)
    return {"params": params, "opt_state": tx.init(params)}

  return fresh_state(laid_out(init, mesh, jax.random.fold_in(key, 0)), key, mesh)


def loss_fn(params, batch, rng, n_active=None, *, model, n_loops: int, label_smoothing: float,
            scan: loop.Scan = loop.PLAIN):
  """(loss, accuracy): the model's own objective (`LoopedBase.loss`: the answer token's cross-entropy unless the
  kind defines another, e.g. exit_gate's expected loss over its exit distribution)."""
  n_active = batch.get("loops", n_active)  # R per example (recurrence difficulty:R_max; `with_loops`)
  return model.loss(params, batch, n_loops, rng=rng, label_smoothing=label_smoothing, n_active=n_active,
                    scan=scan)


def gradients(state: TrainState, batch, n_active=None, dropout: bool = True, **loss_options):
  """(loss, accuracy, grads) of the step state.step on batch (dropout off: no rng); loss_options: `loss_fn`'s."""
  rng = jax.random.fold_in(state.rng, state.step + 1) if dropout else None
  grad_fn = jax.value_and_grad(functools.partial(loss_fn, **loss_options), has_aux=True)
  (loss, acc), grads = grad_fn(state.params, batch, rng, n_active)
  return loss, acc, grads


def apply_gradients(state: TrainState, tx, loss, acc, grads) -> tuple[TrainState, dict]:
  """(the state after the optimizer update with grads, the step's metrics); health notes a first non-finite one."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, "accuracy": acc, "grad_norm": optax.tree.norm(grads),
             "param_norm": optax.tree.norm(params), "update_norm": optax.tree.norm(updates)}
  finite = jnp.stack([jnp.isfinite(metrics[k]) for k in HEALTH])
  first_bad = jnp.stack([state.step, jnp.argmin(finite)]).astype(jnp.int32)
  health = jnp.where((state.health[0] < 0) & ~finite.all(), first_bad, state.health)
  return TrainState(params, opt_state, state.step + 1, state.rng, health), metrics


def train_step(state: TrainState, batch, n_active=None, *, tx, **loss_options) -> tuple[TrainState, dict]:
  """(state, batch) -> (next state, metrics). Pure; R = loss_options["n_loops"] is static, or R = n_active
  (traced) in a program compiled for n_loops = R_max."""
  return apply_gradients(state, tx, *gradients(state, batch, n_active, **loss_options))


def train_step_without_dropout(state: TrainState, batch, n_active=None, *, tx, **loss_options):
  """`train_step` with dropout off (train.dropout_until_check after a stage's first check)."""
  return apply_gradients(state, tx, *gradients(state, batch, n_active, dropout=False, **loss_options))


def nan_step(state: TrainState, batch, n_active=None, *, tx, **loss_options) -> tuple[TrainState, dict]:
  """A debug fault (train.debug_nan_step): `train_step` with NaN gradients."""
  loss, acc, grads = gradients(state, batch, n_active, **loss_options)
  return apply_gradients(state, tx, loss, acc, jax.tree_util.tree_map(lambda g: jnp.full_like(g, jnp.nan), grads))


def train_steps(state: TrainState, batches, loops, *, steps: tuple, first: int) -> tuple[TrainState, dict]:
  """Several optimizer steps in one program: a scan over the batches stacked on a leading K axis and their R
  values `loops` (int32[K]); step k runs steps[loops[k] - first](state, batch, R) (chosen by `lax.switch`; with
  one step function, no switch), each the arithmetic of its one-step program. Returns (the state after the K
  steps, their metrics stacked on K)."""
  def body(state, xs):
    batch, n_loops = xs
    if len(steps) == 1:
      return steps[0](state, batch, n_loops)
    return jax.lax.switch(n_loops - first, steps, state, batch, n_loops)

  return jax.lax.scan(body, state, (batches, loops))


# ------------------------------------------------------------------ compiled step programs (train.loop_programs)


class Programs:
  """train.loop_programs=per_r: one jitted, sharded, state-donating program per R, compiled when first met. The
  state keeps its layout (`sharding.state_shardings` on the mesh) in and out, so its buffers are donated.
  `step(state, batch, n_loops)` runs the right program; `nan_step` the debug fault's."""

  def __init__(self, model, tx, mesh, label_smoothing: float, scan: loop.Scan = loop.PLAIN,
               loop_counts: tuple = ()):
    self.model, self.tx, self.mesh, self.label_smoothing, self.scan = model, tx, mesh, label_smoothing, scan
    self.loop_counts = tuple(loop_counts)  # the R values a run draws (min..max): the branches of `steps`
    self._cache, self._flops, self._waits = {}, {}, 0  # _cache: (n_loops, masked, entry) -> program (or a Future)

  @property
  def n_programs(self) -> int:
    """Programs the steps so far compiled or waited for: a lazily compiled program compiles on its first call, one
    compiled ahead counts when its first step found it unfinished."""
    return self._waits

  def step(self, state: TrainState, batch, n_loops: int, dropout: bool = True) -> tuple[TrainState, dict]:
    """`train_step` with R = n_loops (dropout off: `train_step_without_dropout`, its own program)."""
    return self._run(train_step if dropout else train_step_without_dropout, state, batch, n_loops)

  def nan_step(self, state: TrainState, batch, n_loops: int) -> tuple[TrainState, dict]:
    """`nan_step` (a debug fault, its own program so that every other step runs the unchanged one)."""
    return self._run(nan_step, state, batch, n_loops)

  def steps(self, state: TrainState, batches, loops: list[int], dropout: bool = True) -> tuple[TrainState, dict]:
    """len(loops) steps in one call (`train_steps`): batches stacked on a leading axis (`sharding.put_batches`),
    step k with R = loops[k]; metrics stacked. One program per number of steps, compiled when first met; every
    step bitwise the one `step` would run."""
    entry = train_step if dropout else train_step_without_dropout
    key = (len(loops), "steps", entry)
    if key not in self._cache:
      self._cache[key] = self._jit_steps(entry, state)
      self._waits += 1
    return self._cache[key](state, batches, np.asarray(loops, np.int32))

  def _step_functions(self, entry) -> tuple[tuple, int]:
    """(the step function (state, batch, R) of each R in loop_counts, the first R)."""
    fns = tuple(functools.partial(lambda state, batch, _, n: entry(
        state, batch, tx=self.tx, model=self.model, n_loops=n, label_smoothing=self.label_smoothing,
        scan=self.scan), n=n) for n in self.loop_counts)
    return fns, self.loop_counts[0]

  def _jit_steps(self, entry, state):
    steps, first = self._step_functions(entry)
    rep, layout = sharding.replicated(self.mesh), sharding.state_shardings(state, self.mesh)
    return jax.jit(functools.partial(train_steps, steps=steps, first=first), donate_argnums=0,
                   in_shardings=(layout, sharding.data_sharded(self.mesh, stacked=True), rep),
                   out_shardings=(layout, rep))

  def _run(self, entry, state, batch, n_loops: int):
    return self.program(entry, n_loops, False, state)(state, batch)

  def prepare(self, state: TrainState, upcoming):
    """Called once before the first step; upcoming() = (an example batch, the R values the next steps draw)."""

  def close(self):
    """Stops whatever `prepare` started."""

  def _jit(self, entry, n_loops: int, masked: bool, state):
    fn = functools.partial(entry, model=self.model, tx=self.tx, n_loops=n_loops,
                           label_smoothing=self.label_smoothing, scan=self.scan)
    rep, layout = sharding.replicated(self.mesh), sharding.state_shardings(state, self.mesh)
    shardings = (layout, sharding.data_sharded(self.mesh)) + ((rep,) if masked else ())
    return jax.jit(fn, in_shardings=shardings, out_shardings=(layout, rep), donate_argnums=0)

  def program(self, entry, n_loops: int, masked: bool, state):
    """The program of entry (`train_step` or `nan_step`) for R = n_loops (masked: R_max = n_loops, the active R
    an argument): jitted, its state layout chosen from state's shapes, or the one compiled ahead (waited for)."""
    key = (n_loops, masked, entry)
    if key not in self._cache:
      self._cache[key] = self._jit(entry, n_loops, masked, state)
      self._waits += 1
    elif isinstance(self._cache[key], futures.Future):
      self._waits += not self._cache[key].done()
      self._cache[key] = self._cache[key].result()
    return self._cache[key]

  def flops(self, n_loops: int, state: TrainState, batch) -> float | None:
    """Model FLOPs of one step with n_loops loops on batch (global, all devices): XLA's cost analysis of the step
    lowered with its depth loop unrolled (a while-loop body is counted once) and without remat recomputation; None
    where the backend gives no count."""
    if n_loops not in self._flops:
      fn = functools.partial(train_step, model=self.model, tx=self.tx, n_loops=n_loops,
                             label_smoothing=self.label_smoothing,
                             scan=dataclasses.replace(self.scan, unroll=n_loops, remat="none"))
      shapes = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), (state, batch))
      cost = jax.jit(fn).lower(*shapes).cost_analysis() or {}
      self._flops[n_loops] = cost.get("flops") or None
    return self._flops[n_loops]


class AheadPrograms(Programs):
  """train.loop_programs=ahead: the per_r programs, those of the R values drawn in the first AHEAD_STEPS steps
  compiled at the start in background threads (half the CPU cores, at least one), in the order they are needed."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self._pool = None

  def prepare(self, state: TrainState, upcoming):
    """Starts compiling the programs of upcoming()'s R values: a step then waits only for its own R's program,
    the one lazy compilation builds."""
    batch, loop_counts = upcoming()
    abstract = jax.tree_util.tree_map(  # shapes only: the state itself is donated by the first step
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, weak_type=x.weak_type), (state, batch))
    self._pool = self._pool or futures.ThreadPoolExecutor(max(1, (os.cpu_count() or 2) // 2), "precompile")
    for n_loops in loop_counts:
      if (n_loops, False, train_step) not in self._cache:
        jitted = self._jit(train_step, n_loops, False, abstract[0])
        self._cache[n_loops, False, train_step] = self._pool.submit(lambda j=jitted: j.lower(*abstract).compile())

  def close(self):
    """Cancels the background compiles not yet started (one in progress finishes in its thread)."""
    if self._pool:
      self._pool.shutdown(wait=False, cancel_futures=True)


class OneProgram(Programs):
  """train.loop_programs=one: a single program to R_max = max_loops whose scan skips the loops before the last R
  (`loop.scan_loops` with n_active), so dynamic recurrence compiles once."""

  def __init__(self, *args, max_loops: int, **kwargs):
    super().__init__(*args, **kwargs)
    self.max_loops = max_loops

  def _run(self, entry, state, batch, n_loops: int):
    if not 1 <= n_loops <= self.max_loops:
      raise ValueError(f"R={n_loops} is outside 1..{self.max_loops}, the loop counts this step was compiled for")
    return self.program(entry, self.max_loops, True, state)(state, batch, jnp.int32(n_loops))

  def _step_functions(self, entry) -> tuple[tuple, int]:
    """The one masked step (R_max = max_loops, R the active loops)."""
    fn = lambda state, batch, n_active: entry(state, batch, n_active, tx=self.tx, model=self.model,
                                              n_loops=self.max_loops, label_smoothing=self.label_smoothing,
                                              scan=self.scan)
    return (fn,), 1


AHEAD_STEPS = 1000  # train.loop_programs=ahead compiles the R values drawn in this many steps; later ones when met


def make_programs(cfg: TrainConfig, model, tx, mesh, max_loops: int, min_loops: int = 1) -> Programs:
  """The step programs of cfg.loop_programs, for a run that draws min_loops <= R <= max_loops."""
  args = (model, tx, mesh, cfg.label_smoothing, loop.Scan(cfg.unroll, cfg.remat, cfg.backprop_loops),
          range(min_loops, max_loops + 1))
  if cfg.loop_programs == "one":
    return OneProgram(*args, max_loops=max_loops)
  return {"per_r": Programs, "ahead": AheadPrograms}[cfg.loop_programs](*args)


def draw_loops(rec: Recurrence, seed: int, step: int) -> int:
  """R for a step: fixed, or clip(Poisson(lam), low, high) from a generator keyed by (seed, step); difficulty: the
  largest R (the program's; each example runs its own, `with_loops`)."""
  if rec.schedule != "dynamic":
    return rec.loops
  return int(np.clip(np.random.default_rng([seed, step, 0x52]).poisson(rec.lam), rec.low, rec.high))


def with_loops(rec: Recurrence, batch: dict) -> dict:
  """The batch, with (recurrence difficulty:R_max) `loops`: each example's R, its difficulty clipped to 1..R_max."""
  if rec.schedule != "difficulty":
    return batch
  return {**batch, "loops": np.clip(np.asarray(batch["hop"]), 1, rec.loops).astype(np.int32)}


def first_draws(rec: Recurrence, seed: int, start: int, stop: int) -> list[int]:
  """The distinct R drawn at steps start..stop-1, in the order they first appear."""
  seen = {}
  for step in range(start, stop):
    seen.setdefault(draw_loops(rec, seed, step), step)
    if len(seen) == rec.max_loops - rec.min_loops + 1:
      break
  return list(seen)


# ------------------------------------------------------------------ a run's hooks: stop request, eval listeners


@dataclasses.dataclass
class Stop:
  """A run's stop request: set by SIGTERM / SIGINT under `stop_on_signals`, or by `agree` when another process
  was signalled."""

  requested: bool = False
  signum: int = 0  # the signal that asked for the stop (on any process)
  at_once: bool = False  # a second SIGINT came: whatever unwinds the run now is its consequence

  def agree(self, timed_out: bool) -> tuple[bool, bool]:
    """(process 0's time-budget verdict, whether any process was signalled), the same on every process."""
    self.signum, timed_out = sharding.agree_to_stop(self.signum, timed_out)
    self.requested = self.requested or self.signum > 0
    return timed_out, self.requested


@dataclasses.dataclass(frozen=True)
class Hooks:
  """What a training run is given beside its config: the stop request it obeys (None: a fresh one of its own) and
  the functions `on_eval` registered, each called as fn(model_name, step, {split: accuracy})."""

  stop: Stop | None = None
  listeners: tuple = ()


# The hooks of the runs started in this context (`stop_on_signals`, `on_eval` set them for their `with` block).
_HOOKS = contextvars.ContextVar("looprec_train_hooks", default=Hooks())


def current_hooks() -> Hooks:
  """The hooks a run started here gets."""
  return _HOOKS.get()


@contextlib.contextmanager
def _hooks_set(hooks: Hooks):
  token = _HOOKS.set(hooks)
  try:
    yield hooks
  finally:
    _HOOKS.reset(token)


@contextlib.contextmanager
def stop_on_signals():
  """While active, SIGTERM / SIGINT request a stop (the `Stop` it yields, which the runs started inside obey)
  instead of killing the process: the training loop then checkpoints and raises Interrupted, and a model not yet
  started is not started. A second SIGINT (Ctrl-C twice) sets stop.at_once and raises KeyboardInterrupt at once,
  without a checkpoint."""
  stop, quiet = Stop(), []

  def handle(signum, _):
    if stop.requested and signum == signal.SIGINT:
      stop.at_once = True
      quiet.append(logging.root.manager.disable)  # stopping at once: an interrupted checkpoint writer logs tracebacks
      logging.disable(logging.CRITICAL)
      raise KeyboardInterrupt
    stop.requested, stop.signum = True, signum

  old = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    with _hooks_set(dataclasses.replace(current_hooks(), stop=stop)):
      yield stop
  finally:
    for s, handler in old.items():
      signal.signal(s, handler)
    if quiet:
      logging.disable(quiet[0])


@contextlib.contextmanager
def on_eval(fn):
  """While active, fn(model_name, step, {split: accuracy}) is called after every evaluation during training, e.g.
  to draw curves as they come in:

      with on_eval(lambda name, step, accuracy: print(name, step, accuracy)):
        experiment.run("systematicity", "smoke")
  """
  hooks = current_hooks()
  with _hooks_set(dataclasses.replace(hooks, listeners=hooks.listeners + (fn,))):
    yield


class Interrupted(Exception):
  """Training stopped on a signal after saving a checkpoint; run_dir resumes it; signum: the signal."""

  def __init__(self, message: str, run_dir: str, signum: int = 0):
    super().__init__(message)
    self.run_dir, self.signum = run_dir, signum


class NonFinite(Exception):
  """A NaN or Inf in training; nothing after the last finite checkpoint was saved."""


# ------------------------------------------------------------------ the training loop


@dataclasses.dataclass
class TrainResult:
  params: dict
  steps: int
  trained_max_hop: int
  stages: list  # [[step, hop], ...] when each curriculum stage began
  wall_seconds: float
  curves: dict  # split -> [[step, accuracy], ...] of every evaluation during training


class Trainer:
  """Trains one model of an experiment on a task through the task's curriculum (`run`), resuming from the newest
  readable step of run_dir/checkpoints/<name>. It owns the run's TrainState, its step programs, checkpointer,
  tensorboard writer and progress bar; hooks (default: `current_hooks()`) bring the stop request and the
  evaluation listeners; eval_model (default: model) evaluates, the same model in its evaluation dtype."""

  def __init__(self, name: str, model, rec: Recurrence, steps: int, cfg: TrainConfig, task, mesh, run_dir: str,
               seed: int, config_json: dict, hooks: Hooks | None = None, eval_model=None):
    self.name, self.model, self.rec, self.steps, self.cfg = name, model, rec, steps, cfg
    self.eval_model = eval_model or model
    self.task, self.mesh, self.run_dir, self.seed, self.config_json = task, mesh, run_dir, seed, config_json
    hooks = hooks or current_hooks()
    self.stop, self.listeners = hooks.stop or Stop(), hooks.listeners
    self.curriculum, self.tx, self.lr_at = task.curriculum, make_optimizer(cfg), schedule(cfg)
    self.fingerprint = checkpoint.task_fingerprint(task)
    self.step, self.stage, self.stages = 0, self.curriculum.first, [[0, self.curriculum.first]]
    self.curves, self.elapsed = {}, 0.0
    self.last_saved, self.pending, self.stage_acc = None, None, float("nan")
    self.passed, self.finished = [], False  # [[step, hop], ...] of the stage passes; the last stage passed (stop)

  def run(self) -> TrainResult:
    """Trains to `steps` (or until a stop or the time budget); Interrupted after a checkpoint when stopped."""
    if self.stop.agree(timed_out=False)[1]:
      raise Interrupted(f"stopped before training {self.name}", self.run_dir, self.stop.signum)
    self._check_mesh()
    self.programs = make_programs(self.cfg, self.model, self.tx, self.mesh, self.rec.max_loops, self.rec.min_loops)
    self.ckpt = checkpoint.Checkpointer(os.path.join(self.run_dir, "checkpoints", self.name),
                                        self.cfg.keep_checkpoints)
    self.key = jax.random.PRNGKey(self.seed)
    seq_len = self.task.train_width
    self.state = init_state(self.model, self.tx, self.key, seq_len, self.mesh)
    if not self._restore():
      self.ckpt.close()
      return self._result(self.elapsed)
    try:
      self._open()
      while self.step < self.steps and not self.finished and not self._should_stop():
        self._train_steps()
      self._log_pending(with_rates=False)
      self._save()
    finally:
      self._close()
    if self.stop.requested and self.step < self.steps and not self.finished:
      raise Interrupted(f"{self.name} stopped at step {self.step}; checkpoint saved", self.run_dir, self.stop.signum)
    return self._result(time.time() - self.started)

  def _check_mesh(self):
    sharding.check_batch(self.cfg.batch_size, self.mesh)
    if self.mesh.shape.get("fsdp", 1) != self.cfg.fsdp:
      raise ConfigError(f"train.fsdp={self.cfg.fsdp}, but the mesh splits parameters over "
                        f"{self.mesh.shape.get('fsdp', 1)} devices (make it with sharding.make_mesh(train.fsdp))")

  def _restore(self) -> bool:
    """Resumes from the newest readable checkpoint, if any; whether steps are left to train."""
    self.iterator = None
    restored = self.ckpt.restore_latest(
        checkpoint.abstract_like(self.state.saved()),
        lambda meta: data.stage_iterator(self.task, meta["stage"], self.cfg.batch_size, meta["stages"][-1][0]),
        self.fingerprint)
    if restored is not None:
      self.step, meta, saved, self.iterator = restored
      self.state = fresh_state(saved, self.key, self.mesh, self.step)
      self.stage, self.stages, self.elapsed = meta["stage"], meta["stages"], meta["wall_seconds"]
      self.curves, self.last_saved = meta.get("curves", {}), self.step
      self.passed, self.finished = meta.get("passed", []), meta.get("finished", False)
      _say(f"{self.name}: passed its last curriculum stage at step {self.step}; nothing to train" if self.finished
           else f"{self.name}: resuming at step {self.step} of {self.steps}" if self.step < self.steps else
           f"{self.name}: already trained {self.step} steps (train.steps={self.steps}); nothing to train")
    self.iterator = self.iterator or data.stage_iterator(self.task, self.stage, self.cfg.batch_size, 0)
    return self.step < self.steps and not self.finished

  def _open(self):
    """The step programs prepared, the curriculum stage's checks, tensorboard, the progress bar and the clocks."""
    self.programs.prepare(self.state, self._upcoming)
    self._enter_stage()
    self.writer = None
    if jax.process_index() == 0:  # purge_step hides the points a killed run logged from its last checkpoint on
      self.writer = SummaryWriter(os.path.join(self.run_dir, "tb", self.name), purge_step=self.step)  # (or from 0)
      for split, points in self.curves.items():  # ... which include the evaluation at that checkpoint's step: again
        if points and points[-1][0] == self.step:
          self.writer.add_scalar(f"eval/{split}", points[-1][1], self.step)
    self.bar = tqdm.tqdm(total=self.steps, initial=self.step, desc=self.name, dynamic_ncols=True,
                         disable=jax.process_index() != 0, mininterval=1.0)
    self.meter = throughput.Meter(lambda n_loops: self.programs.flops(n_loops, self.state, self.batch),
                                  lambda: throughput.peak_flops(self.model.cfg.dtype), self.mesh.devices.size)
    cfg = self.cfg
    self.deadline = time.time() + cfg.max_minutes * 60 - self.elapsed if cfg.max_minutes else float("inf")
    self.started = time.time() - self.elapsed

  def _upcoming(self):
    """(an example batch, the R values drawn in the next AHEAD_STEPS steps), for `Programs.prepare`."""
    example = with_loops(self.rec, data.stage_dataset(self.task, self.stage, self.cfg.batch_size, self.step)[0])
    draws = first_draws(self.rec, self.seed, self.step, min(self.steps, self.step + AHEAD_STEPS))
    return sharding.put_batch(example, self.mesh), draws

  def _enter_stage(self):
    self.check_every = self.curriculum.check_every(self.stage, self.cfg.batch_size, self.cfg.eval_every)
    self.eval_sets = self.task.monitor_splits(self.stage)
    self.stage_acc = float("nan")
    self.lr_factor = stage_lr_factor(self.cfg, self.stage, self.curriculum.first)
    if self.cfg.stage_lr_gamma != 1.0 and self.step == self.stages[-1][0]:  # the stage's first step: its lr
      factor = jax.device_put(np.float32(self.lr_factor), sharding.replicated(self.mesh))
      self.state = self.state.replace(opt_state=optax.tree_utils.tree_set(self.state.opt_state, step_size=factor))

  def _dropout_on(self) -> bool:
    """Whether this step trains with dropout: always, or (train.dropout_until_check) until the stage's first
    curriculum check, as in the official loop (`train_model` calls model.train() once per stage, its evaluation
    model.eval(), and nothing switches back)."""
    return (not (self.cfg.dropout_until_check and self.model.cfg.any_dropout)
            or self.step - self.stages[-1][0] < self.check_every)

  def _next_batch(self) -> dict:
    """The data stream's next batch, with each example's R where the recurrence gives one (`with_loops`)."""
    return with_loops(self.rec, next(self.iterator))

  def _steps_in_call(self) -> int:
    """How many steps the next call runs: up to the first step after which something falls due (the step
    before a log step, an evaluation, a gate, a checkpoint, the end, the debug fault), at most
    train.steps_per_call."""
    cfg, start = self.cfg, self.stages[-1][0]
    if self.step == cfg.debug_nan_step:
      return 1
    for n in range(1, cfg.steps_per_call):
      done = self.step + n
      if (done % cfg.log_every == 0 or done % cfg.eval_every == 0 or done % cfg.checkpoint_every == 0
          or done == self.steps or (done - start) % self.check_every == 0 or done == cfg.debug_nan_step):
        return n
    return cfg.steps_per_call

  def _train_steps(self):
    """The steps of one call (`_steps_in_call`: one program runs them all, bitwise the one-step programs), then
    whatever falls due after them: the previous log step's line, an evaluation, a checkpoint."""
    n = self._steps_in_call()
    loops = [draw_loops(self.rec, self.seed, step) for step in range(self.step, self.step + n)]
    n_programs = self.programs.n_programs
    if n == 1:
      self.batch = sharding.put_batch(self._next_batch(), self.mesh)
      if self.step == self.cfg.debug_nan_step:
        self.state, metrics = self.programs.nan_step(self.state, self.batch, loops[0])
      else:
        self.state, metrics = self.programs.step(self.state, self.batch, loops[0], self._dropout_on())
      at = lambda i: metrics
    else:
      batches = sharding.put_batches([self._next_batch() for _ in range(n)], self.mesh)
      self.batch = {k: jax.ShapeDtypeStruct(v.shape[1:], v.dtype) for k, v in batches.items()}
      self.state, metrics = self.programs.steps(self.state, batches, loops, self._dropout_on())
      at = lambda i: jax.tree_util.tree_map(lambda m: m[i], metrics)
    if self.programs.n_programs > n_programs:  # compiling is not training: the rates start after it
      self.meter.restart()
    else:
      for n_loops in loops:
        self.meter.count(n_loops)
    if self.pending is not None:  # fetched one call late so the device never waits for the host
      self._log_pending(with_rates=True)
      self.meter.restart()
    for i, n_loops in enumerate(loops):  # the health read then: a copy, as the state is donated to the next call
      step = self.step + i
      if step % self.cfg.log_every == 0:
        lr_step = step - self.stages[-1][0] if self.cfg.restart_optimizer else step
        self.pending = ((step, at(i), float(self.lr_at(lr_step)) * self.lr_factor, n_loops),
                        jnp.array(self.state.health, copy=True))
    self.step += n
    self.bar.update(n)
    gate = (self.step - self.stages[-1][0]) % self.check_every == 0
    if self.step % self.cfg.eval_every == 0 or self.step == self.steps or gate:
      self._evaluate(gate)
    if self.step % self.cfg.checkpoint_every == 0 and self.step < self.steps:
      self._save()
      self.meter.restart()

  def _log_pending(self, with_rates: bool):
    """The log step held back (if any) to tensorboard and the bar, with the rates since the last one."""
    if self.pending is not None:
      line, health = self.pending
      self._check_finite(health)  # before logging: no NaN reaches tensorboard
      rates = self.meter.rates(self.batch["tokens"].shape) if with_rates and jax.process_index() == 0 else {}
      _log_train(self.writer, self.bar, *line, self.stage, self.stage_acc, rates)
      self.pending = None

  def _evaluate(self, gate: bool):
    """Accuracy on the stage's monitor splits at the training R, to the curves, tensorboard and the listeners;
    at a gate step the curriculum may advance."""
    self._check_finite(self.state.health)
    accuracy = {split: self._accuracy(examples) for split, examples in self.eval_sets.items()}
    for split, acc in accuracy.items():
      self.curves.setdefault(split, []).append([self.step, acc])
      if self.writer:
        self.writer.add_scalar(f"eval/{split}", acc, self.step)
    for listener in self.listeners:
      listener(self.name, self.step, dict(accuracy))
    self.stage_acc = accuracy.get(self.curriculum.gate_split(self.stage), float("nan"))
    self.meter.restart()
    epochs = self.curriculum.epochs(self.stages, self.step, self.cfg.batch_size)
    if gate and self.step < self.steps and self.curriculum.passes(self.stage, accuracy, epochs):
      self._stage_passed()

  def _accuracy(self, examples: dict) -> float:
    """A monitor split's accuracy (eval_model): after eval_loops loops (default: the largest training R), or, with
    train.gate=kl_entropy for a dynamic-R model, where the official adaptive forward (`forward_adapative_ent`)
    halts: KL < 0.5 and entropy < 3 + 12 / T nats (T: the padded length), capped at eval_loops. A difficulty-R
    model runs R = the split's difficulty (clipped to eval_loops)."""
    loops = self.cfg.eval_loops or self.rec.max_loops
    if self.rec.schedule == "difficulty":
      loops = int(np.clip(np.max(examples["hop"]), 1, loops))
    if self.cfg.gate == "kl_entropy" and self.rec.schedule == "dynamic":
      pol = halting.policy("kl_entropy", eps=0.5, max_entropy=3.0 + 12.0 / examples["tokens"].shape[1])
      got = halting.halt_examples(self.eval_model, self.state.params, examples, pol, loops, self.mesh, 1024)
      return float(np.mean(answer_correct(got["answer"], examples["target"])))
    return evaluation.accuracy(self.eval_model, self.state.params, examples, loops, self.mesh, batch_size=1024)

  def _stage_passed(self):
    """The stage passed its gate: its checkpoint (train.stage_checkpoints), then the next stage, or after the last
    the end of training (train.stop_after_last_stage)."""
    if not any(hop == self.stage for _, hop in self.passed):
      self.passed.append([self.step, self.stage])
      if self.cfg.stage_checkpoints:
        meta = {"stage": self.stage, "step": self.step, "accuracy": self.stage_acc, "model": self.name,
                "config": self.config_json, "data_fingerprint": self.fingerprint}
        checkpoint.save_stage(self.run_dir, self.name, self.stage, self.state.params, meta)
    if self.stage < self.curriculum.last:
      self._next_stage()
    elif self.cfg.stop_after_last_stage:
      self.finished = True

  def _next_stage(self):
    """The next hop: its data stream from this step, its checks, and (train.restart_optimizer) a fresh optimizer."""
    self.stage += 1
    self.stages.append([self.step, self.stage])
    self.iterator = data.stage_iterator(self.task, self.stage, self.cfg.batch_size, self.step)
    if self.cfg.restart_optimizer:
      self.state = self.state.replace(opt_state=laid_out(self.tx.init, self.mesh, self.state.params))
    self._enter_stage()

  def _check_finite(self, health):
    """Raises NonFinite when a step so far produced a NaN / Inf (a host read: call it where the host waits
    anyway, at a log step, an evaluation or a save)."""
    first, which = (int(x) for x in jax.device_get(health))
    if first >= 0:
      self.ckpt.wait()
      kept = self.ckpt.steps()
      raise NonFinite(f"{self.name}: non-finite {HEALTH[which]} at step {first}; nothing after it was saved; "
                      + (f"the newest checkpoint is step {kept[0]}" if kept else "no checkpoint was written"))

  def _save(self):
    if self.step == self.last_saved:  # already on disk (a resume that trains no step, a stop right after a save)
      return
    self._check_finite(self.state.health)
    if self.writer:  # every point before this step on disk before the step is: a resume re-logs only what follows
      self.writer.flush()
    meta = {"stage": self.stage, "stages": self.stages, "wall_seconds": time.time() - self.started,
            "curves": self.curves, "model": self.name, "config": self.config_json,
            "data_fingerprint": self.fingerprint, "passed": self.passed, "finished": self.finished}
    self.ckpt.save(self.step, self.state.saved(), self.iterator, meta)
    self.last_saved = self.step

  def _should_stop(self) -> bool:
    """Agreed by all processes every log_every steps (every step when there is one)."""
    if jax.process_count() > 1 and self.step % self.cfg.log_every:
      return False
    timed_out, signalled = self.stop.agree(time.time() >= self.deadline)
    return timed_out or signalled

  def _close(self):
    self.programs.close()
    self.ckpt.wait()  # a save in flight completes (it holds a finite state) whatever stopped the loop
    self.ckpt.close()
    self.bar.close()
    if self.writer:
      self.writer.close()

  def _result(self, wall_seconds: float) -> TrainResult:
    return TrainResult(self.state.params, self.step, self.stage, self.stages, wall_seconds, self.curves)


def train_model(name: str, model, rec: Recurrence, steps: int, cfg: TrainConfig, task, mesh, run_dir: str,
                seed: int, config_json: dict, eval_model=None) -> TrainResult:
  """Trains one model of an experiment (`Trainer`), with the hooks of this context; eval_model evaluates."""
  return Trainer(name, model, rec, steps, cfg, task, mesh, run_dir, seed, config_json, eval_model=eval_model).run()


def _say(message: str):
  if jax.process_index() == 0:
    print(message, file=sys.stderr, flush=True)


def _log_train(writer, bar, step, metrics, lr, n_loops, stage, stage_acc, rates):
  """Train metrics of a step to the progress bar and tensorboard, with the throughput `rates` since the last log
  (`throughput.Meter.rates`; {} for none)."""
  m = {k: float(v) for k, v in jax.device_get(metrics).items()}
  curriculum = {} if np.isnan(stage_acc) else {"hop": stage, "eval": f"{stage_acc:.2f}"}
  speed = {"ex/s": f"{rates['examples_per_second']:.3g}", "tok/s": f"{rates['tokens_per_second']:.3g}"} if rates else {}
  if rates.get("mfu") is not None:
    speed["MFU"] = f"{rates['mfu']:.1%}"
  bar.set_postfix({"loss": f"{m['loss']:.3f}", "acc": f"{m['accuracy']:.2f}", "R": n_loops, **curriculum, **speed},
                  refresh=False)
  if writer:
    for k, v in m.items():
      writer.add_scalar(f"train/{k}", v, step)
    for k, v in rates.items():
      if v is not None:
        writer.add_scalar(f"train/{k}", v, step)
    writer.add_scalar("train/lr", lr, step)
    writer.add_scalar("train/loops", n_loops, step)
    writer.add_scalar("train/stage_hop", stage, step)
