"""The proof that looprec's model is the paper's: a small model of the official architecture built in PyTorch
(Hugging Face GPT2Blocks looped, the official injection and init), saved, imported, gives the same logits for
R = 1, 3, 8 (float32, 1e-5), also through the official pad-only attention mask, and in bfloat16 against PyTorch's
autocast (BF16_TOLERANCE); the imported run folder is analyzed by `python -m looprec analyze`.

Needs the optional extra (`make test-torch` installs it); skipped when torch or transformers is absent.
"""
import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from transformers import GPT2Config  # pylint: disable=wrong-import-position
from transformers.models.gpt2.modeling_gpt2 import GPT2Block  # pylint: disable=wrong-import-position

from conftest import ROOT  # pylint: disable=wrong-import-position
from looprec import checkpoint, importer, models, selection  # pylint: disable=wrong-import-position
from looprec.config import ModelConfig  # pylint: disable=wrong-import-position


class OfficialLoop(torch.nn.Module):
  """The official model's architecture, written from its description: token embedding (nn.Embedding, N(0, 1)),
  optional learned positions (N(0, 1)), n_layer GPT2Blocks looped R times with the embeddings added before every
  loop after the first (input injection), final LayerNorm (eps 1e-5), head tied to the token embedding; the
  blocks' output projections multiplied by c_scale. Causal attention with pads masked as keys."""

  def __init__(self, vocab: int, d: int, heads: int, layers: int, positions: int, learned_pos: bool,
               injection: bool, c_scale: float):
    super().__init__()
    config = GPT2Config(vocab_size=vocab, n_positions=positions, n_embd=d, n_layer=layers, n_head=heads,
                        embd_pdrop=0.0, resid_pdrop=0.0, attn_pdrop=0.0)
    config._attn_implementation = "eager"  # pylint: disable=protected-access
    self.blocks = torch.nn.ModuleList([GPT2Block(config) for _ in range(layers)])
    self.token_embedding = torch.nn.Embedding(vocab, d)
    self.position_embedding = torch.nn.Embedding(positions, d) if learned_pos else None
    self.ln_f = torch.nn.LayerNorm(d, eps=config.layer_norm_epsilon)
    self.lm_head = torch.nn.Linear(d, vocab, bias=False)
    self.lm_head.weight = self.token_embedding.weight
    self.injection, self.loops = injection, 1
    with torch.no_grad():
      for block in self.blocks:
        for proj in (block.attn.c_proj, block.mlp.c_proj):
          proj.weight.mul_(c_scale)
          proj.bias.zero_()

  def forward(self, tokens_BxT, official_mask: bool = False):
    """official_mask: the official forward's own mask, pads only, `(1 - mask) * -10000` of shape B x 1 x 1 x T,
    with `block(...)[0]` (causality left to the block, as the pinned transformers' GPT2Block applies it); else an
    explicit causal-and-pad mask."""
    t = tokens_BxT.shape[1]
    e_BxTxD = self.token_embedding(tokens_BxT)
    if self.position_embedding is not None:
      e_BxTxD = e_BxTxD + self.position_embedding(torch.arange(t))[None]
    if official_mask:
      mask = (1.0 - (tokens_BxT != 0)[:, None, None, :].to(e_BxTxD.dtype)) * -10000.0
    else:
      allowed = torch.tril(torch.ones(t, t, dtype=torch.bool))[None, None] & (tokens_BxT != 0)[:, None, None, :]
      mask = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)
    h_BxTxD = e_BxTxD
    for i in range(self.loops):
      if self.injection and i > 0:
        h_BxTxD = h_BxTxD + e_BxTxD
      for block in self.blocks:
        out = block(h_BxTxD, attention_mask=mask)
        h_BxTxD = out[0] if official_mask or isinstance(out, tuple) else out
    return self.lm_head(self.ln_f(h_BxTxD))


def perturb(model: torch.nn.Module, seed: int):
  """Random LayerNorm gains and biases (1 and 0 at init), so a norm or bias mapped to the wrong place shows."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias") or ".ln_" in name or name.startswith("ln_f"):
        p.add_(0.1 * torch.randn(p.shape, generator=gen))


TOKENS = np.array([[5, 12, 13, 14, 0, 0, 0, 0], [6, 12, 0, 0, 0, 0, 0, 0], [7, 13, 14, 12, 13, 14, 12, 0]], np.int32)
CASES = {  # the depth task's model (NoPE, injection, zero-free c_scale) and the systematicity one (learned positions)
    "depth": (dict(learned_pos=False, injection=True, c_scale=0.5),
              dict(pos_emb="none", injection="add")),
    "systematicity": (dict(learned_pos=True, injection=False, c_scale=1.0),
                      dict(pos_emb="learned", max_positions=8, injection="none")),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_imported_logits_equal_pytorch(tmp_path, case, fmt):
  torch_kw, ours = CASES[case]
  torch.manual_seed(0)
  ref = OfficialLoop(vocab=20, d=32, heads=4, layers=2, positions=8, **torch_kw).eval()
  perturb(ref, 1)
  path = str(tmp_path / f"model.{fmt}")
  if fmt == "pt":  # a training checkpoint as the official script saves it
    torch.save({"epoch": 3, "model_state_dict": ref.state_dict()}, path)
  else:
    state = {k: v.contiguous() for k, v in ref.state_dict().items() if k != "lm_head.weight"}  # tied: stored once
    safetensors_torch.save_file(state, path)
  cfg = ModelConfig(d_model=32, n_heads=4, n_layers=2, ln_eps=1e-5, **ours)
  model = models.build(cfg, 20)
  params = importer.to_params(importer.read_state_dict(path), cfg, 20)
  for loops in (1, 3, 8):
    ref.loops = loops
    with torch.no_grad():
      want = ref(torch.from_numpy(TOKENS).long()).numpy()
    got = np.asarray(model.apply(params, TOKENS, loops))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"{case}, R = {loops}")


def _imported(tmp_path, case: str, dtype: str = "float32"):
  """(the PyTorch reference of CASES[case], looprec's model and the imported params)."""
  torch_kw, ours = CASES[case]
  torch.manual_seed(0)
  ref = OfficialLoop(vocab=20, d=32, heads=4, layers=2, positions=8, **torch_kw).eval()
  perturb(ref, 1)
  path = str(tmp_path / "model.pt")
  torch.save({"model_state_dict": ref.state_dict()}, path)
  cfg = ModelConfig(d_model=32, n_heads=4, n_layers=2, ln_eps=1e-5, dtype=dtype, **ours)
  return ref, models.build(cfg, 20), importer.to_params(importer.read_state_dict(path), cfg, 20)


@pytest.mark.parametrize("case", list(CASES))
def test_the_official_pad_only_mask_path_gives_the_same_logits(tmp_path, case):
  """The official forward passes only a pad mask and takes `block(...)[0]`: with the pinned transformers the block
  returns a tuple and applies the causal mask itself, and the logits equal looprec's (float32, 1e-5)."""
  ref, model, params = _imported(tmp_path, case)
  assert isinstance(ref.blocks[0](torch.zeros(1, 2, 32)), tuple), transformers.__version__
  for loops in (1, 3, 8):
    ref.loops = loops
    with torch.no_grad():
      want = ref(torch.from_numpy(TOKENS).long(), official_mask=True).numpy()
    np.testing.assert_allclose(np.asarray(model.apply(params, TOKENS, loops)), want, rtol=1e-5, atol=1e-5,
                               err_msg=f"{case}, R = {loops}")


# max |logit difference| / max |logit| at R = 1, 3, 8; measured 0.0023-0.0042 (transformers 4.57.6, torch 2.13.0
# CPU), with every argmax equal
BF16_TOLERANCE = 0.01


@pytest.mark.parametrize("case", list(CASES))
def test_bfloat16_logits_agree_with_pytorch_autocast(tmp_path, case):
  """looprec with model.dtype=bfloat16 against the official bf16 path (torch.autocast over the forward, parameters
  float32): the same logits up to bfloat16's precision, BF16_TOLERANCE of the largest logit."""
  ref, model, params = _imported(tmp_path, case, dtype="bfloat16")
  for loops in (1, 3, 8):
    ref.loops = loops
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
      want = ref(torch.from_numpy(TOKENS).long(), official_mask=True).float().numpy()
    got = np.asarray(model.apply(params, TOKENS, loops), np.float32)
    assert np.abs(got - want).max() <= BF16_TOLERANCE * np.abs(want).max(), (case, loops, np.abs(got - want).max())
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9, (case, loops)


def test_import_cli_then_analyze(tmp_path):
  """`import-checkpoint` of a (shrunken) depth paper preset writes a run folder with the same logits, and
  `analyze` runs on it."""
  overrides = ["model.d_model=32", "model.n_heads=4", "models.looped.n_layers=2", "model.dtype=float32",
               "data.n_entities=12", "data.n_relations=3", "data.seq_len=10", "data.n_eval=16",
               "data.train_chains_per_hop=50", "eval.max_hop=4", "eval.max_loops=8", "data.curriculum.last_hop=3",
               "train.batch_size=8"]
  vocab = 12 + 3 + 7
  torch.manual_seed(0)
  ref = OfficialLoop(vocab=vocab, d=32, heads=4, layers=2, positions=10, learned_pos=False, injection=False,
                     c_scale=0.5).eval()
  perturb(ref, 2)
  path, out = tmp_path / "checkpoint_final.pt", tmp_path / "run"
  torch.save({"epoch": 1, "model_state_dict": ref.state_dict()}, path)
  proc = subprocess.run([sys.executable, "-m", "looprec", "import-checkpoint", str(path), "--experiment",
                         "depth_extrap", "--preset", "paper", "--out", str(out), *overrides],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr
  saved = json.loads((out / "config.json").read_text())
  assert saved["imported_from"] == str(path) and list(saved["config"]["models"]) == ["looped"]
  params, meta = checkpoint.restore_params(str(out / "checkpoints" / "looped"))
  assert meta["stage"] == 3
  cfg = ModelConfig(**{**saved["config"]["model"], "n_layers": 2})
  tokens = np.array([[1 + 6, 1 + 12, 1 + 13, 0], [1 + 2, 1 + 14, 0, 0]], np.int32)  # an entity, then relations
  ref.loops = 5
  with torch.no_grad():
    want = ref(torch.from_numpy(tokens).long()).numpy()
  np.testing.assert_allclose(np.asarray(models.build(cfg, vocab).apply(params, tokens, 5)), want, rtol=1e-5,
                             atol=1e-5)
  proc = subprocess.run([sys.executable, "-m", "looprec", "analyze", str(out), "--margin-loops", "10",
                         "--halt-loops", "8"], cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr
  looped = json.loads((out / "analysis.json").read_text())["models"]["looped"]
  held_out = {"atomic", "2hop_test", "3hop_test", "4hop_test"}
  assert set(looped["sweep"]) == held_out | {selection.val_split(s) for s in held_out} and looped["halting"]
