"""Training: the optimizer, the pure jitted step, and the loop (recurrence schedule, hop curriculum,
checkpoints with exact resume, tensorboard scalars, progress bar)."""
from __future__ import annotations

from concurrent import futures
import contextlib
import dataclasses
import functools
import os
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from tensorboardX import SummaryWriter

from looprec import checkpoint, data, eval as evaluation, loop, sharding, throughput
from looprec.config import ConfigError, Recurrence, TrainConfig


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
  return optax.chain(*parts, adamw) if parts else adamw


def loss_fn(params, batch, rng, n_active=None, *, model, n_loops: int, label_smoothing: float,
            scan: loop.Scan = loop.PLAIN):
  """(loss, accuracy): the model's own objective (`LoopedBase.loss`: the answer token's cross-entropy unless the
  kind defines another, e.g. exit_gate's expected loss over its exit distribution)."""
  return model.loss(params, batch, n_loops, rng=rng, label_smoothing=label_smoothing, n_active=n_active,
                    scan=scan)


HEALTH = ("loss", "grad_norm", "update_norm", "param_norm")  # the quantities checked for NaN / Inf


def train_step(state, batch, rng, step, health, n_active=None, *, model, tx, n_loops: int, label_smoothing: float,
               poison: bool = False, scan: loop.Scan = loop.PLAIN):
  """(state = {"params", "opt_state"}, batch, rng, step, health) -> (new state, metrics, health). Pure; R =
  n_loops is static, or R = n_active (traced) in a program compiled for n_loops = R_max. health = [first step
  with a non-finite HEALTH quantity (-1: none), its index in HEALTH], kept on the device and read only where the
  host syncs anyway. poison (a debug fault, a separate compilation so that every other step runs the unchanged
  program) makes the gradients NaN."""
  grad_fn = jax.value_and_grad(functools.partial(loss_fn, model=model, n_loops=n_loops,
                                                 label_smoothing=label_smoothing, scan=scan), has_aux=True)
  (loss, acc), grads = grad_fn(state["params"], batch, rng, n_active)
  if poison:
    grads = jax.tree_util.tree_map(lambda g: jnp.full_like(g, jnp.nan), grads)
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  metrics = {"loss": loss, "accuracy": acc, "grad_norm": optax.tree.norm(grads),
             "param_norm": optax.tree.norm(params), "update_norm": optax.tree.norm(updates)}
  finite = jnp.stack([jnp.isfinite(metrics[k]) for k in HEALTH])
  first_bad = jnp.stack([step, jnp.argmin(finite)]).astype(jnp.int32)
  health = jnp.where((health[0] < 0) & ~finite.all(), first_bad, health)
  return {"params": params, "opt_state": opt_state}, metrics, health


class StepFunctions:
  """The jitted, sharded, state-donating train step for a loop count R, compiled on first use and cached, or ahead
  of use in background threads (`precompile`). The state keeps its layout (`sharding.state_shardings` on the mesh)
  in and out, so its buffers are donated.

  max_loops = 0 compiles one program per R; max_loops = R_max compiles one program that runs any R <= R_max
  (`loop.scan_loops` with n_active), so dynamic recurrence compiles once.
  """

  def __init__(self, model, tx, mesh, label_smoothing: float, scan: loop.Scan = loop.PLAIN,
               max_loops: int = 0):
    self.model, self.tx, self.mesh, self.label_smoothing = model, tx, mesh, label_smoothing
    self.scan, self.max_loops = scan, max_loops
    self._cache, self._flops = {}, {}  # _cache: (n_loops, masked, poison) -> the step (a Future while precompiling)
    self._pool, self._waits = None, 0

  @property
  def n_programs(self) -> int:
    """Programs the steps so far compiled or waited for: a lazily compiled program compiles on its first call, one
    compiled ahead counts when its first step found it unfinished."""
    return self._waits

  def _jit(self, n_loops: int, masked: bool, poison: bool, state):
    fn = functools.partial(train_step, model=self.model, tx=self.tx, n_loops=n_loops,
                           label_smoothing=self.label_smoothing, poison=poison, scan=self.scan)
    rep, dat = sharding.replicated(self.mesh), sharding.data_sharded(self.mesh)
    layout = sharding.state_shardings(state, self.mesh)
    shardings = (layout, dat, rep, rep, rep) + ((rep,) if masked else ())
    return jax.jit(fn, in_shardings=shardings, out_shardings=(layout, rep, rep), donate_argnums=0)

  def compiled(self, n_loops: int, masked: bool, poison: bool, state):
    """The step for R = n_loops (masked: R_max = n_loops, the active R an argument): jitted, its state layout
    chosen from state's shapes, or the program `precompile` built (waiting for it if need be)."""
    key = (n_loops, masked, poison)
    if key not in self._cache:
      self._cache[key] = self._jit(n_loops, masked, poison, state)
      self._waits += 1
    elif isinstance(self._cache[key], futures.Future):
      self._waits += not self._cache[key].done()
      self._cache[key] = self._cache[key].result()
    return self._cache[key]

  def precompile(self, loop_counts, example_args):
    """Starts compiling the per-R steps of loop_counts (max_loops = 0), in that order, in background threads
    (half the CPU cores, at least one): a step then waits only for its own R's program. example_args =
    (state, batch, rng, step, health) shaped as the steps will be called. The programs are those that lazy
    compilation builds; close() cancels the compiles not yet started."""
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, weak_type=x.weak_type) if isinstance(x, jax.Array) else x,
        example_args)  # shapes only: the state itself is donated by the first step
    self._pool = self._pool or futures.ThreadPoolExecutor(max(1, (os.cpu_count() or 2) // 2), "precompile")
    for n_loops in loop_counts:
      if (n_loops, False, False) not in self._cache:
        jitted = self._jit(n_loops, False, False, abstract[0])
        self._cache[n_loops, False, False] = self._pool.submit(lambda j=jitted: j.lower(*abstract).compile())

  def close(self):
    """Cancels the background compiles not yet started (one in progress finishes in its thread)."""
    if self._pool:
      self._pool.shutdown(wait=False, cancel_futures=True)

  def flops(self, n_loops: int, state, batch) -> float | None:
    """Model FLOPs of one step with n_loops loops on batch (global, all devices): XLA's cost analysis of the step
    lowered with its depth loop unrolled (a while-loop body is counted once) and without remat recomputation; None
    where the backend gives no count."""
    if n_loops not in self._flops:
      fn = functools.partial(train_step, model=self.model, tx=self.tx, n_loops=n_loops,
                             label_smoothing=self.label_smoothing,
                             scan=dataclasses.replace(self.scan, unroll=n_loops, remat="none"))
      shapes = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), (state, batch))
      cost = jax.jit(fn).lower(*shapes, jax.random.PRNGKey(0), 0, HEALTHY).cost_analysis() or {}
      self._flops[n_loops] = cost.get("flops") or None
    return self._flops[n_loops]

  def __call__(self, n_loops: int, poison: bool = False):
    """The step for R = n_loops: (state, batch, rng, step, health) -> (state, metrics, health)."""
    if self.max_loops and not 1 <= n_loops <= self.max_loops:
      raise ValueError(f"R={n_loops} is outside 1..{self.max_loops}, the loop counts this step was compiled for")
    active = (jnp.int32(n_loops),) if self.max_loops else ()

    def run(state, batch, rng, step, health):
      fn = self.compiled(self.max_loops or n_loops, bool(self.max_loops), poison, state)
      return fn(state, batch, rng, step, health, *active)

    return run


def draw_loops(rec: Recurrence, seed: int, step: int) -> int:
  """R for a step: fixed, or clip(Poisson(lam), low, high) from a generator keyed by (seed, step)."""
  if rec.kind == "fixed":
    return rec.loops
  return int(np.clip(np.random.default_rng([seed, step, 0x52]).poisson(rec.lam), rec.low, rec.high))


AHEAD_STEPS = 1000  # train.loop_programs=ahead compiles the R values drawn in this many steps; later ones when met


def first_draws(rec: Recurrence, seed: int, start: int, stop: int) -> list[int]:
  """The distinct R drawn at steps start..stop-1, in the order they first appear."""
  seen = {}
  for step in range(start, stop):
    seen.setdefault(draw_loops(rec, seed, step), step)
    if len(seen) == rec.max_loops - rec.min_loops + 1:
      break
  return list(seen)


def laid_out(fn, mesh, *args):
  """fn(*args), a params or optimizer-state tree, in its `sharding.state_shardings` layout on the mesh. With an
  `fsdp` axis it comes from a jitted program whose outputs are created split, so no leaf is ever whole on one
  device; without one it is computed op by op and replicated, bitwise as before the axis existed (under jit the
  normal draws of the init differ in the last bit)."""
  if "fsdp" not in mesh.axis_names:
    return jax.device_put(fn(*args), sharding.replicated(mesh))
  return jax.jit(fn, out_shardings=sharding.state_shardings(jax.eval_shape(fn, *args), mesh))(*args)


def init_state(model, tx, rng, seq_len: int, mesh) -> dict:
  """{"params", "opt_state"} of a fresh model, laid out on the mesh."""
  def init(rng):
    params = model.init(rng, seq_len)
    return {"params": params, "opt_state": tx.init(params)}

  return laid_out(init, mesh, rng)


@dataclasses.dataclass
class TrainResult:
  params: dict
  steps: int
  trained_max_hop: int
  stages: list  # [[step, hop], ...] when each curriculum stage began
  wall_seconds: float
  curves: dict  # split -> [[step, accuracy], ...] of every evaluation during training


class _StopFlag:
  requested = False
  signum = 0  # the signal that asked for the stop (on any process)


STOP = _StopFlag()


@contextlib.contextmanager
def stop_on_signals():
  """While active, SIGTERM / SIGINT set STOP.requested instead of killing the process: the training loop then
  checkpoints and raises Interrupted, and a model not yet started is not started. A second SIGINT (Ctrl-C
  twice) raises KeyboardInterrupt at once, without a checkpoint."""
  def handle(signum, _):
    if STOP.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    STOP.requested, STOP.signum = True, signum

  old = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield
  finally:
    for s, handler in old.items():
      signal.signal(s, handler)


def agreed_stop(timed_out: bool) -> tuple[bool, bool]:
  """(process 0's time-budget verdict, whether any process was signalled), the same on every process; a
  signal seen elsewhere sets STOP here too."""
  STOP.signum, timed_out = sharding.agree_to_stop(STOP.signum, timed_out)
  STOP.requested = STOP.requested or STOP.signum > 0
  return timed_out, STOP.requested


EVAL_LISTENERS = []  # functions called by on_eval


@contextlib.contextmanager
def on_eval(fn):
  """While active, fn(model_name, step, {split: accuracy}) is called after every evaluation during training, e.g.
  to draw curves as they come in:

      with on_eval(lambda name, step, accuracy: print(name, step, accuracy)):
        experiment.run("systematicity", "smoke")
  """
  EVAL_LISTENERS.append(fn)
  try:
    yield
  finally:
    EVAL_LISTENERS.remove(fn)


class Interrupted(Exception):
  """Training stopped on a signal after saving a checkpoint; run_dir resumes it."""

  def __init__(self, message: str, run_dir: str):
    super().__init__(message)
    self.run_dir = run_dir


class NonFinite(Exception):
  """A NaN or Inf in training; nothing after the last finite checkpoint was saved."""


HEALTHY = np.array([-1, 0], np.int32)


def train_model(name: str, model, rec: Recurrence, steps: int, cfg: TrainConfig, task, mesh, run_dir: str,
                seed: int, config_json: dict) -> TrainResult:
  """Trains one model of an experiment on a task (through the task's curriculum), resuming from the newest
  readable step of run_dir/checkpoints/<name>."""
  if agreed_stop(timed_out=False)[1]:
    raise Interrupted(f"stopped before training {name}", run_dir)
  sharding.check_batch(cfg.batch_size, mesh)
  if mesh.shape.get("fsdp", 1) != cfg.fsdp:
    raise ConfigError(f"train.fsdp={cfg.fsdp}, but the mesh splits parameters over {mesh.shape.get('fsdp', 1)} "
                      "devices (make it with sharding.make_mesh(train.fsdp))")
  curriculum = task.curriculum
  tx = make_optimizer(cfg)
  step_fn = StepFunctions(model, tx, mesh, cfg.label_smoothing, loop.Scan(cfg.unroll, cfg.remat, cfg.backprop_loops),
                          max_loops=rec.max_loops if cfg.loop_programs == "one" else 0)
  key = jax.random.PRNGKey(seed)
  state = init_state(model, tx, jax.random.fold_in(key, 0), data.width(curriculum.last, task.cfg.answer_at), mesh)
  fingerprint = checkpoint.task_fingerprint(task)
  ckpt = checkpoint.Checkpointer(os.path.join(run_dir, "checkpoints", name), cfg.keep_checkpoints)
  step, stage, stages, elapsed, curves = 0, curriculum.first, [[0, curriculum.first]], 0.0, {}
  iterator = None
  restored = ckpt.restore_latest(
      checkpoint.abstract_like(state),
      lambda meta: data.stage_iterator(task, meta["stage"], cfg.batch_size, meta["stages"][-1][0]),
      fingerprint)
  if restored is not None:
    step, meta, state, iterator = restored
    stage, stages, elapsed, curves = meta["stage"], meta["stages"], meta["wall_seconds"], meta.get("curves", {})
    _say(f"{name}: resuming at step {step} of {steps}" if step < steps else
         f"{name}: already trained {step} steps (train.steps={steps}); nothing to train")
    if step >= steps:
      ckpt.close()
      return TrainResult(state["params"], step, stage, stages, elapsed, curves)
  iterator = iterator or data.stage_iterator(task, stage, cfg.batch_size, 0)
  if cfg.loop_programs == "ahead":
    example = sharding.put_batch(data.stage_dataset(task, stage, cfg.batch_size, step)[0], mesh)
    step_fn.precompile(first_draws(rec, seed, step, min(steps, step + AHEAD_STEPS)),
                       (state, example, key, step, HEALTHY))
  eval_loops = cfg.eval_loops or rec.max_loops
  check_every = curriculum.check_every(stage, cfg.batch_size, cfg.eval_every)
  eval_sets = task.monitor_splits(stage)
  lr_at = schedule(cfg)
  writer = None
  if jax.process_index() == 0:  # purge_step hides the points a killed run logged from its last checkpoint on
    writer = SummaryWriter(os.path.join(run_dir, "tb", name), purge_step=step)  # (from 0 if it had none)
    for split, points in curves.items():  # ... which include the evaluation at that checkpoint's step: again
      if points and points[-1][0] == step:
        writer.add_scalar(f"eval/{split}", points[-1][1], step)
  bar = tqdm.tqdm(total=steps, initial=step, desc=name, dynamic_ncols=True, disable=jax.process_index() != 0,
                  mininterval=1.0)
  meter = throughput.Meter(lambda n_loops: step_fn.flops(n_loops, state, batch),
                           lambda: throughput.peak_flops(model.cfg.dtype), mesh.devices.size)
  deadline = time.time() + cfg.max_minutes * 60 - elapsed if cfg.max_minutes else float("inf")
  started, stage_acc, pending, pending_health = time.time() - elapsed, float("nan"), None, None
  health = jax.device_put(HEALTHY, sharding.replicated(mesh))
  last_saved = step if restored is not None else None

  def check_finite(health_now):
    """Raises NonFinite when a step so far produced a NaN / Inf (a host read: call it where the host waits
    anyway, at a log step, an evaluation or a save)."""
    first, which = (int(x) for x in jax.device_get(health_now))
    if first >= 0:
      ckpt.wait()
      kept = ckpt.steps()
      raise NonFinite(f"{name}: non-finite {HEALTH[which]} at step {first}; nothing after it was saved; "
                      + (f"the newest checkpoint is step {kept[0]}" if kept else "no checkpoint was written"))

  def save():
    nonlocal last_saved
    if step == last_saved:  # already on disk (a resume that trains no step, a stop right after a save)
      return
    check_finite(health)
    if writer:  # every point before this step on disk before the step is: a resume re-logs only what follows
      writer.flush()
    meta = {"stage": stage, "stages": stages, "wall_seconds": time.time() - started, "curves": curves,
            "model": name, "config": config_json, "data_fingerprint": fingerprint}
    ckpt.save(step, state, iterator, meta)
    last_saved = step

  def should_stop() -> bool:
    """Agreed by all processes every log_every steps (every step when there is one)."""
    if jax.process_count() > 1 and step % cfg.log_every:
      return False
    timed_out, signalled = agreed_stop(time.time() >= deadline)
    return timed_out or signalled

  try:
    while step < steps and not should_stop():
      n_loops = draw_loops(rec, seed, step)
      batch = sharding.put_batch(next(iterator), mesh)
      n_programs = step_fn.n_programs
      state, metrics, health = step_fn(n_loops, step == cfg.debug_nan_step)(state, batch,
                                                                            jax.random.fold_in(key, step + 1), step, health)
      if step_fn.n_programs > n_programs:  # compiling is not training: the rates start after it
        meter.restart()
      else:
        meter.count(n_loops)
      if pending is not None:  # fetched one step late so the device never waits for the host
        check_finite(pending_health)  # before logging: no NaN reaches tensorboard
        rates = meter.rates(batch["tokens"].shape) if jax.process_index() == 0 else {}
        _log_train(writer, bar, *pending, stage, stage_acc, rates)
        meter.restart()
        pending = None
      if step % cfg.log_every == 0:
        lr_step = step - stages[-1][0] if cfg.restart_optimizer else step
        pending, pending_health = (step, metrics, float(lr_at(lr_step)), n_loops), health
      step += 1
      bar.update(1)
      gate = (step - stages[-1][0]) % check_every == 0
      if step % cfg.eval_every == 0 or step == steps or gate:
        check_finite(health)
        accuracy = {split: evaluation.accuracy(model, state["params"], ex, eval_loops, mesh, batch_size=1024)
                    for split, ex in eval_sets.items()}
        for split, acc in accuracy.items():
          curves.setdefault(split, []).append([step, acc])
          if writer:
            writer.add_scalar(f"eval/{split}", acc, step)
        for listener in EVAL_LISTENERS:
          listener(name, step, dict(accuracy))
        stage_acc = accuracy.get(curriculum.gate_split(stage), float("nan"))
        meter.restart()
        if gate and step < steps and curriculum.advances(stage, accuracy,
                                                         curriculum.epochs(stages, step, cfg.batch_size)):
          stage += 1
          stages.append([step, stage])
          check_every = curriculum.check_every(stage, cfg.batch_size, cfg.eval_every)
          iterator = data.stage_iterator(task, stage, cfg.batch_size, step)
          eval_sets = task.monitor_splits(stage)
          stage_acc = float("nan")
          if cfg.restart_optimizer:
            state = {"params": state["params"], "opt_state": laid_out(tx.init, mesh, state["params"])}
      if step % cfg.checkpoint_every == 0 and step < steps:
        save()
        meter.restart()
    if pending is not None:
      check_finite(pending_health)
      _log_train(writer, bar, *pending, stage, stage_acc, {})
    save()
  finally:
    step_fn.close()
    ckpt.wait()  # a save in flight completes (it holds a finite state) whatever stopped the loop
    ckpt.close()
    bar.close()
    if writer:
      writer.close()
  if STOP.requested and step < steps:
    raise Interrupted(f"{name} stopped at step {step}; checkpoint saved", run_dir)
  return TrainResult(state["params"], step, stage, stages, time.time() - started, curves)


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
