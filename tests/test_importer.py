"""Importing official checkpoints without torch: the key/shape mapping round-trips looprec params, and bad input
(missing file, torch absent for a .pt, unknown key, wrong shape) is one line, exit 2, nothing written."""
import dataclasses
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT
from looprec import importer
from looprec.config import ConfigError, ModelConfig
from looprec.models.looped import LoopedTransformer

CFG = ModelConfig(d_model=16, n_heads=4, n_layers=2, pos_emb="learned", max_positions=5, injection="none")
VOCAB = 13


def official_layout(params: dict, n_layers: int) -> dict:
  """looprec params as the official state_dict (names and shapes), written independently of the importer."""
  state = {"token_embedding.weight": params["embed"], "lm_head.weight": params["embed"],
           "ln_f.weight": params["final_norm"]["scale"], "ln_f.bias": params["final_norm"]["bias"]}
  if "pos" in params:
    state["position_embedding.weight"] = params["pos"]
  for i in range(n_layers):
    layer, pre = params["block"][f"layer_{i}"], f"blocks.{i}."
    d = layer["ln1"]["scale"].shape[0]
    state.update({
        pre + "ln_1.weight": layer["ln1"]["scale"], pre + "ln_1.bias": layer["ln1"]["bias"],
        pre + "ln_2.weight": layer["ln2"]["scale"], pre + "ln_2.bias": layer["ln2"]["bias"],
        pre + "attn.c_attn.weight": layer["attn"]["qkv"]["kernel"].reshape(d, 3 * d),
        pre + "attn.c_attn.bias": layer["attn"]["qkv"]["bias"].reshape(3 * d),
        pre + "attn.c_proj.weight": layer["attn"]["out"]["kernel"].reshape(d, d),
        pre + "attn.c_proj.bias": layer["attn"]["out"]["bias"],
        pre + "mlp.c_fc.weight": layer["fc"]["kernel"], pre + "mlp.c_fc.bias": layer["fc"]["bias"],
        pre + "mlp.c_proj.weight": layer["proj"]["kernel"], pre + "mlp.c_proj.bias": layer["proj"]["bias"],
        pre + "attn.bias": np.ones((1, 1, 5, 5), bool)})  # the causal-mask buffer older versions saved
  return {k: np.asarray(v) for k, v in state.items()}


@pytest.fixture(scope="module")
def params():
  p = LoopedTransformer(CFG, VOCAB).init(jax.random.PRNGKey(0))
  # random biases and norms, so a bias or norm mapped to the wrong place shows
  leaves, tree = jax.tree_util.tree_flatten(p)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  return jax.tree_util.tree_unflatten(tree, [np.asarray(x + 0.1 * jax.random.normal(k, x.shape))
                                             for x, k in zip(leaves, keys)])


def test_round_trip(params):
  state = {f"_orig_mod.{k}": v for k, v in official_layout(params, 2).items()}  # a torch.compile'd model's keys
  back = importer.to_params(state, CFG, VOCAB)
  jax.tree_util.tree_map(np.testing.assert_array_equal, back, params)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("blocks.1.mlp.c_fc.bias"), "lacks 'blocks.1.mlp.c_fc.bias'"),
    (lambda s: s.update({"blocks.2.ln_1.weight": np.ones(16)}), "unknown key 'blocks.2.ln_1.weight'"),
    (lambda s: s.update({"token_embedding.weight": np.ones((VOCAB + 1, 16)), "lm_head.weight": np.ones((VOCAB + 1, 16))}),
     "token_embedding.weight has shape (14, 16); the preset's model needs (13, 16)"),
    (lambda s: s.update({"blocks.0.attn.c_attn.weight": np.ones((16, 32))}), "(16, 32); the preset's model needs (16, 48)"),
    (lambda s: s.update({"lm_head.weight": s["lm_head.weight"] + 1}), "lm_head.weight differs"),
])
def test_bad_state_dicts_name_the_key(params, edit, message):
  state = official_layout(params, 2)
  edit(state)
  with pytest.raises(ConfigError) as e:
    importer.to_params(state, CFG, VOCAB)
  assert message in str(e.value) and "\n" not in str(e.value)


def _cli(*args, block_torch=False):
  prelude = "import sys; sys.modules['torch'] = None; " if block_torch else ""
  code = prelude + "from looprec.cli import main; sys.exit(main(sys.argv[1:]))"
  return subprocess.run([sys.executable, "-c", "import sys; " + code, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)


@pytest.mark.parametrize("make_file, block_torch, message", [
    (False, False, "checkpoint file not found"),
    (True, True, "needs torch: pip install 'looprec[torch]'"),
])
def test_cli_bad_input_one_line_nothing_written(tmp_path, make_file, block_torch, message):
  path, out = tmp_path / "model.pt", tmp_path / "run"
  if make_file:
    path.write_bytes(b"not a pickle")
  proc = _cli("import-checkpoint", str(path), "--experiment", "depth_extrap", "--preset", "smoke", "--out", str(out),
              "model.injection=add", "model.out_init_scale=1", block_torch=block_torch)
  assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
  assert not out.exists()


def test_cli_refuses_a_non_empty_out(tmp_path):
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "x").write_text("")
  proc = _cli("import-checkpoint", str(tmp_path / "m.pt"), "--experiment", "depth_extrap", "--out",
              str(tmp_path / "run"))
  assert proc.returncode == 2 and "is not an empty folder" in proc.stderr
  assert os.listdir(tmp_path / "run") == ["x"]


@pytest.mark.parametrize("cfg, edit, message", [
    (dataclasses.replace(CFG, pos_emb="none"), lambda s: None,
     "the checkpoint has a learned position table (position_embedding.weight), the preset's model has "
     "model.pos_emb=none: import with model.pos_emb=learned"),
    (CFG, lambda s: s.pop("position_embedding.weight"),
     "the checkpoint has no position table or buffer (NoPE), the preset's model has model.pos_emb=learned: import "
     "with model.pos_emb=none"),
    (dataclasses.replace(CFG, pos_emb="none"), lambda s: s.update({"pe": np.zeros((5, 16))}),
     "has a sinusoidal position buffer (pe)"),
])
def test_what_the_state_dict_shows_must_match_the_preset(params, cfg, edit, message):
  state = official_layout(params, 2)
  edit(state)
  if "pe" in state:
    state.pop("position_embedding.weight")
  with pytest.raises(ConfigError, match=re.escape(message)):
    importer.to_params(state, cfg, VOCAB)


def test_what_a_state_dict_cannot_show_must_be_stated_unless_official():
  from experiments import depth_extrap, systematicity
  paper = depth_extrap.paper().model
  cpu = depth_extrap.cpu().model_cfg("looped")  # injection add, output projections unscaled (c_scale 1)
  with pytest.raises(ConfigError, match=re.escape("the preset has model.injection='add', not the official default "
                                                  "'none' (--input_injection), and a checkpoint cannot show")):
    importer.check_unseen(cpu, paper, [])
  with pytest.raises(ConfigError, match=r"model.out_init_scale=1.0, not the official default 0.0 \(--c_scale\)"):
    importer.check_unseen(cpu, paper, ["model.injection=add"])
  importer.check_unseen(cpu, paper, ["model.injection=add", "model.out_init_scale=1.0"])  # stated: accepted
  importer.check_unseen(depth_extrap.paper().model_cfg("looped"), paper, [])  # official values need no statement
  importer.check_unseen(systematicity.cpu().model, systematicity.paper().model, [])  # c_scale: none in task A


def test_cli_refuses_an_unstated_injection_with_one_line(tmp_path):
  path, out = tmp_path / "model.pt", tmp_path / "run"
  path.write_bytes(b"never read: the preset is refused first")
  proc = _cli("import-checkpoint", str(path), "--experiment", "depth_extrap", "--preset", "cpu", "--out", str(out))
  assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
  assert proc.stderr.startswith("error: the preset has model.injection='add'") and not out.exists()
