"""Training: the optimizer, the pure jitted step, and the loop (recurrence schedule, hop curriculum,
checkpoints with exact resume, tensorboard scalars, progress bar)."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from tensorboardX import SummaryWriter

from looprec import checkpoint, data, eval as evaluation, loop, sharding
from looprec.config import ModelConfig, Recurrence, TrainConfig
from looprec import models


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
  """AdamW (decay on matrices only, as GPT-2 trainers do) behind optional global-norm clipping and then an
  optional Grokfast filter (after the clipping, which would otherwise undo its amplification)."""
  decay_mask = lambda params: jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)
  adamw = optax.adamw(schedule(cfg), b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=decay_mask)
  parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip else []
  parts += [grokfast_ema(cfg.grokfast_alpha, cfg.grokfast_lambda)] if cfg.grokfast_alpha else []
  return optax.chain(*parts, adamw) if parts else adamw


def loss_fn(params, batch, rng, n_active=None, *, model, n_loops: int, label_smoothing: float,
            backprop: loop.Backprop = loop.FULL):
  """Cross-entropy of the answer token over the whole vocabulary, read at each example's answer position."""
  logits_BxV = model.answer_logits(params, batch["tokens"], batch["read_pos"], n_loops, rng=rng, n_active=n_active,
                                   backprop=backprop)
  labels_BxV = optax.smooth_labels(jax.nn.one_hot(batch["target"], logits_BxV.shape[-1]), label_smoothing)
  loss = optax.softmax_cross_entropy(logits_BxV, labels_BxV).mean()
  return loss, jnp.mean(jnp.argmax(logits_BxV, -1) == batch["target"])


def train_step(state, batch, rng, n_active=None, *, model, tx, n_loops: int, label_smoothing: float,
               backprop: loop.Backprop = loop.FULL):
  """state = {"params", "opt_state"} -> (new state, metrics). Pure; R = n_loops is static, or R = n_active
  (traced) in a program compiled for n_loops = R_max."""
  grad_fn = jax.value_and_grad(functools.partial(loss_fn, model=model, n_loops=n_loops,
                                                 label_smoothing=label_smoothing, backprop=backprop), has_aux=True)
  (loss, acc), grads = grad_fn(state["params"], batch, rng, n_active)
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  metrics = {"loss": loss, "accuracy": acc, "grad_norm": optax.tree.norm(grads),
             "param_norm": optax.tree.norm(params), "update_norm": optax.tree.norm(updates)}
  return {"params": params, "opt_state": opt_state}, metrics


class StepFunctions:
  """The jitted, sharded, state-donating train step for a loop count R, compiled on first use and cached.

  max_loops = 0 compiles one program per R; max_loops = R_max compiles one program that runs any R <= R_max
  (`loop.scan_loops` with n_active), so dynamic recurrence compiles once.
  """

  def __init__(self, model, tx, mesh, label_smoothing: float, backprop: loop.Backprop = loop.FULL,
               max_loops: int = 0):
    self.model, self.tx, self.mesh, self.label_smoothing = model, tx, mesh, label_smoothing
    self.backprop, self.max_loops = backprop, max_loops
    self._cache = {}

  def _compiled(self, n_loops: int, masked: bool):
    if (n_loops, masked) not in self._cache:
      fn = functools.partial(train_step, model=self.model, tx=self.tx, n_loops=n_loops,
                             label_smoothing=self.label_smoothing, backprop=self.backprop)
      rep, dat = sharding.replicated(self.mesh), sharding.data_sharded(self.mesh)
      shardings = (rep, dat, rep, rep) if masked else (rep, dat, rep)
      self._cache[n_loops, masked] = jax.jit(fn, in_shardings=shardings, out_shardings=(rep, rep), donate_argnums=0)
    return self._cache[n_loops, masked]

  def __call__(self, n_loops: int):
    if not self.max_loops:
      return self._compiled(n_loops, False)
    if not 1 <= n_loops <= self.max_loops:
      raise ValueError(f"R={n_loops} is outside 1..{self.max_loops}, the loop counts this step was compiled for")
    fn = self._compiled(self.max_loops, True)
    return lambda state, batch, rng: fn(state, batch, rng, jnp.int32(n_loops))


def draw_loops(rec: Recurrence, seed: int, step: int) -> int:
  """R for a step: fixed, or clip(Poisson(lam), low, high) from a generator keyed by (seed, step)."""
  if rec.kind == "fixed":
    return rec.loops
  return int(np.clip(np.random.default_rng([seed, step, 0x52]).poisson(rec.lam), rec.low, rec.high))


def init_state(model, tx, rng, seq_len: int, mesh) -> dict:
  params = model.init(rng, seq_len)
  state = {"params": params, "opt_state": tx.init(params)}
  return jax.device_put(state, sharding.replicated(mesh))


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


STOP = _StopFlag()


@contextlib.contextmanager
def stop_on_signals():
  """While active, SIGTERM / SIGINT set STOP.requested instead of killing the process: the training loop then
  checkpoints and raises Interrupted, and a model not yet started is not started."""
  def handle(*_):
    STOP.requested = True

  old = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield
  finally:
    for s, handler in old.items():
      signal.signal(s, handler)


class Interrupted(Exception):
  """Training stopped on a signal after saving a checkpoint."""


def train_model(name: str, model_cfg: ModelConfig, recurrence: str, steps: int, cfg: TrainConfig, task, mesh,
                run_dir: str, seed: int, config_json: dict) -> TrainResult:
  """Trains one model of an experiment, resuming from run_dir/checkpoints/<name> when it holds a checkpoint."""
  if STOP.requested:
    raise Interrupted(f"stopped before training {name}")
  rec = Recurrence.parse(recurrence)
  sharding.check_batch(cfg.batch_size, mesh)
  model = models.build(model_cfg, task.vocab.size)
  tx = make_optimizer(cfg)
  step_fn = StepFunctions(model, tx, mesh, cfg.label_smoothing, loop.Backprop(cfg.remat, cfg.backprop_loops),
                          max_loops=rec.max_loops if cfg.loop_programs == "one" else 0)
  key = jax.random.PRNGKey(seed)
  state = init_state(model, tx, jax.random.fold_in(key, 0), data.width(cfg.max_hop, task.cfg.answer_at), mesh)
  ckpt = checkpoint.Checkpointer(os.path.join(run_dir, "checkpoints", name), cfg.keep_checkpoints)
  step, stage, stages, elapsed, curves = 0, cfg.start_hop, [[0, cfg.start_hop]], 0.0, {}
  latest = ckpt.latest_step()
  iterator = None
  if latest is not None:
    meta = ckpt.restore_meta(latest)
    step, stage, stages, elapsed = latest, meta["stage"], meta["stages"], meta["wall_seconds"]
    curves = meta.get("curves", {})
    iterator = data.stage_iterator(task, stage, cfg.batch_size, stages[-1][0], cfg.max_hop)
    state = ckpt.restore(latest, checkpoint.abstract_like(state), iterator)
    if meta.get("done"):
      ckpt.close()
      return TrainResult(state["params"], step, stage, stages, elapsed, curves)
  iterator = iterator or data.stage_iterator(task, stage, cfg.batch_size, 0, cfg.max_hop)
  eval_loops = cfg.eval_loops or rec.max_loops
  eval_sets = task.monitor_splits(stage)
  lr_at = schedule(cfg)
  writer = SummaryWriter(os.path.join(run_dir, "tb", name)) if jax.process_index() == 0 else None
  bar = tqdm.tqdm(total=steps, initial=step, desc=name, dynamic_ncols=True, disable=jax.process_index() != 0,
                  mininterval=1.0)
  deadline = time.time() + cfg.max_minutes * 60 - elapsed if cfg.max_minutes else float("inf")
  started, stage_acc, pending = time.time() - elapsed, float("nan"), None

  last_saved = latest

  def save(done: bool):
    nonlocal last_saved
    if step == last_saved:  # the step is already on disk (a save at a checkpoint_every boundary, or a resume)
      ckpt.wait()
      ckpt.manager.delete(step)
    meta = {"stage": stage, "stages": stages, "wall_seconds": time.time() - started, "done": done,
            "curves": curves, "model": name, "config": config_json}
    ckpt.save(step, state, iterator, meta)
    last_saved = step

  while step < steps and time.time() < deadline and not STOP.requested:
    n_loops = draw_loops(rec, seed, step)
    batch = sharding.put_batch(next(iterator), mesh)
    state, metrics = step_fn(n_loops)(state, batch, jax.random.fold_in(key, step + 1))
    if pending is not None:  # fetched one step late so the device never waits for the host
      _log_train(writer, bar, *pending, stage, stage_acc)
      pending = None
    if step % cfg.log_every == 0:
      lr_step = step - stages[-1][0] if cfg.restart_optimizer else step
      pending = (step, metrics, float(lr_at(lr_step)), n_loops)
    step += 1
    bar.update(1)
    if step % cfg.eval_every == 0 or step == steps:
      for split, ex in eval_sets.items():
        acc = evaluation.accuracy(model, state["params"], ex, eval_loops, mesh, batch_size=1024)
        curves.setdefault(split, []).append([step, acc])
        if writer:
          writer.add_scalar(f"eval/{split}", acc, step)
      stage_split = data.split_name(stage)  # the curriculum's current hop (chain tasks)
      stage_acc = curves[stage_split][-1][1] if stage_split in eval_sets else float("nan")
      if stage_acc > cfg.threshold and stage < cfg.max_hop and step < steps:
        stage += 1
        stages.append([step, stage])
        iterator = data.stage_iterator(task, stage, cfg.batch_size, step, cfg.max_hop)
        eval_sets = task.monitor_splits(stage)
        stage_acc = float("nan")
        if cfg.restart_optimizer:
          state = {"params": state["params"],
                   "opt_state": jax.device_put(tx.init(state["params"]), sharding.replicated(mesh))}
    if step % cfg.checkpoint_every == 0 and step < steps:
      save(done=False)
  if pending is not None:
    _log_train(writer, bar, *pending, stage, stage_acc)
  save(done=step >= steps)
  ckpt.wait()
  ckpt.close()
  bar.close()
  if writer:
    writer.close()
  if STOP.requested and step < steps:
    raise Interrupted(f"{name} stopped at step {step}; checkpoint saved")
  return TrainResult(state["params"], step, stage, stages, time.time() - started, curves)


def _log_train(writer, bar, step, metrics, lr, n_loops, stage, stage_acc):
  m = {k: float(v) for k, v in jax.device_get(metrics).items()}
  curriculum = {} if np.isnan(stage_acc) else {"hop": stage, "eval": f"{stage_acc:.2f}"}
  bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{m['accuracy']:.2f}", R=n_loops, **curriculum, refresh=False)
  if writer:
    for k, v in m.items():
      writer.add_scalar(f"train/{k}", v, step)
    writer.add_scalar("train/lr", lr, step)
    writer.add_scalar("train/loops", n_loops, step)
    writer.add_scalar("train/stage_hop", stage, step)
