"""Checkpoints of the official PyTorch model (Loop-Think-Generalize's `RecurrentGPT2Block`) as looprec run folders.

The official model is a list of Hugging Face `GPT2Block`s looped R times, a token embedding (the head is tied
to it), an optional learned position table, and a final LayerNorm. Its `state_dict` keys map one to one onto
looprec's params (GPT-2's `Conv1D` stores weights as in x out, like a Flax kernel):

    token_embedding.weight           V x D    -> embed            (lm_head.weight: the same tensor, tied)
    position_embedding.weight        P x D    -> pos              (learned positions only)
    blocks.{i}.ln_1 / ln_2           D        -> block/layer_{i}/ln1 / ln2  (weight -> scale, bias)
    blocks.{i}.attn.c_attn           D x 3D   -> .../attn/qkv     (D x 3 x H x K: q, k, v, then heads)
    blocks.{i}.attn.c_proj           D x D    -> .../attn/out     (H x K x D)
    blocks.{i}.mlp.c_fc / c_proj     D x F, F x D -> .../fc / proj
    ln_f                             D        -> final_norm

A training checkpoint (`{"model_state_dict": ...}`), a bare state_dict, a torch.compile prefix (`_orig_mod.`)
and the attention-mask buffers older transformers versions saved are all accepted. Reading `.pt` needs torch,
`.safetensors` needs safetensors: the optional extra `looprec[torch]`. Bad input raises ConfigError (one line
naming the file, key or shape) before anything is written.

What a state_dict shows is checked against the preset: the kind of positions (a `position_embedding.weight` table:
learned; a `pe` buffer: sinusoidal; neither: none) and every shape. What it cannot show, input injection (no
parameters) and c_scale (it only scaled the initial output projections), the caller states as an override whenever
the preset's value is not the official default (the paper preset's); otherwise the import is refused.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil

import jax
import numpy as np

from looprec import checkpoint, config as C, experiment, models, runs, tasks
from looprec.config import ConfigError, ModelConfig

EXTRA = "pip install 'looprec[torch]' (or: pip install -e '.[torch]')"
OFFICIAL_LN_EPS = 1e-5  # GPT2Config.layer_norm_epsilon, also the official ln_f's
IGNORED = re.compile(r"blocks\.\d+\.attn\.(bias|masked_bias)|pe")  # buffers: the causal mask, the sinusoid table
POSITIONS = {"learned": "a learned position table (position_embedding.weight)", "sinusoidal": "a sinusoidal "
             "position buffer (pe)", "none": "no position table or buffer (NoPE)"}
# model keys a state_dict cannot show -> the official argument they stand for
UNSEEN = {"injection": "--input_injection", "out_init_scale": "--c_scale"}


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """name -> float32 array of a .pt/.pth/.bin (torch) or .safetensors file."""
  if not os.path.isfile(path):
    raise ConfigError(f"checkpoint file not found: {path}")
  if path.endswith(".safetensors"):
    try:
      from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise ConfigError(f"reading {path} needs the safetensors package: {EXTRA}") from None
    try:
      state = load_file(path)
    except Exception as e:  # pylint: disable=broad-except  (a corrupt file: any error of the reader)
      raise ConfigError(f"{path}: not a readable safetensors file ({type(e).__name__})") from None
    return {k: np.asarray(v, np.float32) for k, v in state.items()}
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ConfigError(f"reading the PyTorch checkpoint {path} needs torch: {EXTRA}") from None
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__})") from None
  if isinstance(obj, dict) and "model_state_dict" in obj:
    obj = obj["model_state_dict"]
  if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
    raise ConfigError(f"{path}: expected a state_dict (or a dict with 'model_state_dict'), got {type(obj).__name__}")
  return {k: v.detach().to(torch.float32).numpy() for k, v in obj.items()}


def positions_of(state: dict[str, np.ndarray]) -> str:
  """The model.pos_emb a state_dict was trained with: its position table or sinusoid buffer shows it."""
  keys = {k.removeprefix("_orig_mod.") for k in state}
  return "learned" if "position_embedding.weight" in keys else "sinusoidal" if "pe" in keys else "none"


def check_unseen(cfg: ModelConfig, official: ModelConfig, overrides: list[str]):
  """ConfigError unless every key of UNSEEN has the official value or was stated by the caller (an override)."""
  stated = {item.partition("=")[0] for item in overrides}
  for key, flag in UNSEEN.items():
    value, default = getattr(cfg, key), getattr(official, key)
    if value != default and f"model.{key}" not in stated:
      raise ConfigError(f"the preset has model.{key}={value!r}, not the official default {default!r} ({flag}), and a "
                        f"checkpoint cannot show which the model was trained with: state it, model.{key}={value} or "
                        f"model.{key}={default}")


def to_params(state: dict[str, np.ndarray], cfg: ModelConfig, vocab_size: int) -> dict:
  """looprec params of model cfg from an official state_dict; ConfigError on a missing, unknown or
  mis-shaped key."""
  state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}
  if positions_of(state) != cfg.pos_emb:
    raise ConfigError(f"the checkpoint has {POSITIONS[positions_of(state)]}, the preset's model has model.pos_emb="
                      f"{cfg.pos_emb}: import with model.pos_emb={positions_of(state)}")
  if "lm_head.weight" in state and "token_embedding.weight" in state:
    if not np.array_equal(state["lm_head.weight"], state["token_embedding.weight"]):
      raise ConfigError("lm_head.weight differs from token_embedding.weight: looprec's head is tied to the embedding")
  expected = jax.eval_shape(models.build(cfg, vocab_size).init, jax.random.PRNGKey(0))
  sources = {"embed": "token_embedding.weight", "final_norm/scale": "ln_f.weight", "final_norm/bias": "ln_f.bias"}
  if cfg.pos_emb == "learned":
    sources["pos"] = "position_embedding.weight"
  for i in range(cfg.n_layers):
    for torch_name, ours in (("ln_1", "ln1"), ("ln_2", "ln2"), ("attn.c_attn", "attn/qkv"),
                             ("attn.c_proj", "attn/out"), ("mlp.c_fc", "fc"), ("mlp.c_proj", "proj")):
      weight = "scale" if torch_name.startswith("ln") else "kernel"
      sources[f"block/layer_{i}/{ours}/{weight}"] = f"blocks.{i}.{torch_name}.weight"
      sources[f"block/layer_{i}/{ours}/bias"] = f"blocks.{i}.{torch_name}.bias"
  known = set(sources.values()) | {"lm_head.weight"}
  unknown = sorted(k for k in state if k not in known and not IGNORED.fullmatch(k))
  if unknown:
    raise ConfigError(f"unknown key {unknown[0]!r} in the checkpoint (not part of a model with "
                      f"model.n_layers={cfg.n_layers}, model.pos_emb={cfg.pos_emb})")
  flat = {}
  for ours, name in sources.items():
    if name not in state:
      raise ConfigError(f"the checkpoint lacks {name!r} (needed for {ours})")
    want = _leaf(expected, ours).shape
    if state[name].shape != _torch_shape(ours, want):
      raise ConfigError(f"{name} has shape {tuple(state[name].shape)}; the preset's model needs "
                        f"{_torch_shape(ours, want)} (model.d_model={cfg.d_model}, model.n_heads={cfg.n_heads}, "
                        f"vocab {vocab_size})")
    flat[ours] = state[name].reshape(want)
  return _unflatten(flat)


def _torch_shape(path: str, flax_shape) -> tuple:
  """The official tensor shape of a looprec leaf: the heads (and q, k, v) merged back into one axis."""
  if path.endswith("attn/qkv/kernel"):  # D x 3 x H x K
    return (flax_shape[0], int(np.prod(flax_shape[1:])))
  if path.endswith("attn/qkv/bias"):  # 3 x H x K
    return (int(np.prod(flax_shape)),)
  if path.endswith("attn/out/kernel"):  # H x K x D
    return (flax_shape[0] * flax_shape[1], flax_shape[2])
  return tuple(flax_shape)


def _leaf(tree, path: str):
  for part in path.split("/"):
    tree = tree[part]
  return tree


def _unflatten(flat: dict) -> dict:
  tree = {}
  for path, value in flat.items():
    *parents, last = path.split("/")
    node = tree
    for part in parents:
      node = node.setdefault(part, {})
    node[last] = value
  return tree


def import_run(path: str, experiment_name: str, preset: str | None, overrides: list[str], out: str,
               model_name: str = "looped", trained_hop: int = 0) -> str:
  """Writes run folder `out` (config.json and checkpoints/<model_name>) holding the checkpoint at `path` as model
  `model_name` of the experiment's preset (the config keeps only that model; model.ln_eps becomes the official
  1e-5). Everything is read and checked before `out` is created; returns out."""
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise ConfigError(f"--out {out!r} exists and is not an empty folder")
  module = experiment.load(experiment_name)
  preset, cfg = experiment.resolve(module, preset, overrides)
  if model_name not in cfg.models:
    raise ConfigError(f"--model {model_name!r} is not a model of the preset (have {C.choices(model_name, cfg.models)})")
  check_unseen(cfg.model_cfg(model_name), experiment.paper_preset(module).model, overrides)
  cfg = dataclasses.replace(cfg, models={model_name: cfg.models[model_name]},
                            model=dataclasses.replace(cfg.model, ln_eps=OFFICIAL_LN_EPS))
  module.validate(cfg)
  vocab_size = tasks.make_task(cfg.data).vocab.size
  params = to_params(read_state_dict(path), cfg.model_cfg(model_name), vocab_size)
  last_hop = cfg.data.curriculum.last_hop if hasattr(cfg.data, "curriculum") else 2
  meta = {"stage": trained_hop or last_hop, "stages": [], "done": True, "wall_seconds": 0.0,
          "model": model_name, "imported_from": os.path.abspath(path), "config": C.to_dict(cfg)}
  os.makedirs(out, exist_ok=True)
  try:
    runs.write_json(os.path.join(out, "config.json"), {"experiment": experiment_name, "preset": preset,
                                                       "imported_from": os.path.abspath(path),
                                                       "config": C.to_dict(cfg)})
    checkpoint.save_params(os.path.join(out, "checkpoints", model_name), params, meta)
  except BaseException:
    shutil.rmtree(out, ignore_errors=True)
    raise
  return out
