"""looprec's train step against an independent PyTorch step of the official model, side by side in one process.

    pip install -e ".[bench]"          # torch==2.13.0 (CPU build) and transformers
    .venv/bin/python benchmarks/vs_pytorch.py [--shapes tiny,cpu,paper] [--rounds 5] [--no-compile]

The PyTorch model is what the paper's code runs: Hugging Face `GPT2Block`s (L of them) looped R times in Python,
no position embeddings (NoPE), a final LayerNorm and a head tied to the token embedding; the loss is the
cross-entropy of the answer token at each example's answer position; AdamW with weight decay on matrices only.
The `torch eager` rows mask pads as keys (sdpa attention) and compute logits at the answer position only, as
looprec does; the `official step` row is the official loop's simpler step: eager attention with GPT2's own causal
mask and no pad mask, logits for every position (B x T x V), the loss read at the answer position.
looprec runs the same model (`injection=none`, `pos_emb=none`, full causal attention, float32) through
`looprec.models.build` and `looprec.train.Programs` (forward, backward and AdamW in one jitted program): as
configured by default, and with the options that change speed, not results (`--variants`: `train.unroll=R`,
`train.remat=dots`, `model.attention=dot_product`, ...).
Both see the same right-padded batch (pads masked as keys). Steps are timed in interleaved rounds (one block of
steps per implementation per round, so machine noise hits all alike) and the median ms/step is printed with
looprec's speed-up over each PyTorch variant, and each row's achieved GFLOP/s (the step's FLOPs from XLA's cost
analysis of the unrolled step, the same model for all rows) against the best matmul rate each library reaches on
this machine (a 2048 x 2048 float32 matmul): what bounds a step that is mostly matmuls. torch uses as many threads as XLA's CPU client (the CPUs this
process may run on); eager PyTorch on one thread is shown too, since on a loaded machine torch's OpenMP threads
lose time waiting for each other on small ops. The load average is printed: compare ratios from quiet runs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import numpy as np

from looprec import loop, models, sharding, throughput, train
from looprec.config import ModelConfig, TrainConfig

# (d_model, n_heads, n_layers, R, batch, seq_len, vocab): the tiny cpu depth preset, the middle shape with
# the cpu preset's padded length, and the paper's (RECIPE task B: d 768, 12 heads, L 4, inputs padded to 50,
# 200 entities + 10 relations + specials).
SHAPES = {
    "tiny": (64, 4, 1, 4, 64, 6, 27),
    "cpu": (256, 4, 2, 4, 128, 12, 27),
    "paper": (768, 12, 4, 4, 128, 50, 213),
}


def make_batch(rng: np.random.Generator, batch: int, seq_len: int, vocab: int) -> dict:
  """Right-padded random queries (pad id 0) of 2..seq_len tokens, answer read at the last input token."""
  lengths_B = rng.integers(2, seq_len + 1, batch)
  tokens_BxT = rng.integers(1, vocab, (batch, seq_len)).astype(np.int32)
  tokens_BxT[np.arange(seq_len)[None, :] >= lengths_B[:, None]] = 0
  return {"tokens": tokens_BxT, "read_pos": (lengths_B - 1).astype(np.int32),
          "target": rng.integers(1, vocab, batch).astype(np.int32)}


# looprec rows: name -> (model.attention, loop.Scan given R); the first is the default configuration.
VARIANTS = {
    "looprec": ("einsum", lambda r: loop.PLAIN),
    "unroll=R": ("einsum", lambda r: loop.Scan(unroll=r)),
    "remat=dots": ("einsum", lambda r: loop.Scan(remat="dots")),
    "unroll=R+remat=dots": ("einsum", lambda r: loop.Scan(unroll=r, remat="dots")),
    "attention=dot_product": ("dot_product", lambda r: loop.PLAIN),
}


def looprec_step(shape, train_cfg: TrainConfig, batch: dict, variant: str):
  """(run(n), the step's FLOPs) for a looprec VARIANTS row; run(n) returns the params after its n steps."""
  d, h, n_layers, n_loops, _, seq_len, vocab = shape
  attention, scan = VARIANTS[variant]
  cfg = ModelConfig(d_model=d, n_heads=h, n_layers=n_layers, pos_emb="none", injection="none", attn_window=0,
                    attention=attention)
  model = models.build(cfg, vocab)
  tx = train.make_optimizer(train_cfg)
  mesh = sharding.make_mesh()
  steps = train.Programs(model, tx, mesh, 0.0, scan(n_loops))
  state = train.init_state(model, tx, jax.random.PRNGKey(0), seq_len, mesh)
  device_batch = sharding.put_batch(batch, mesh)
  flops = steps.flops(n_loops, state, device_batch)
  holder = {"state": state}

  def run(n: int):
    for _ in range(n):
      holder["state"], _ = steps.step(holder["state"], device_batch, n_loops)
    return jax.block_until_ready(holder["state"]).params
  return run, flops


def torch_matmul_peak(n: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of the best of `repeats` float32 n x n torch matmuls (as many threads as XLA uses)."""
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  a = torch.ones(n, n)
  a @ a  # pylint: disable=pointless-statement
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    a @ a  # pylint: disable=pointless-statement
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best


def torch_steps(shape, train_cfg: TrainConfig, batch: dict, compile_modes, single_thread: bool = True):
  """{name: run(n)} for PyTorch eager and each torch.compile mode that compiles on this machine."""
  import torch  # pylint: disable=import-outside-toplevel
  from torch import nn  # pylint: disable=import-outside-toplevel
  from transformers import GPT2Config  # pylint: disable=import-outside-toplevel
  from transformers.models.gpt2.modeling_gpt2 import GPT2Block  # pylint: disable=import-outside-toplevel

  d, h, n_layers, n_loops, _, seq_len, vocab = shape

  class LoopedGPT2(nn.Module):
    """L GPT2Blocks looped R times in Python, NoPE, final LayerNorm, head tied to the token embedding. Default: sdpa
    attention with a pad-and-causal mask, logits at the answer position only (what looprec computes). official:
    the official code's simpler step: eager attention with GPT2's own causal mask and no pad mask, logits for
    every position, the loss read at the answer position."""

    def __init__(self, official: bool = False):
      super().__init__()
      gcfg = GPT2Config(n_embd=d, n_head=h, n_layer=n_layers, n_positions=seq_len, vocab_size=vocab,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None,
                        eos_token_id=None, attn_implementation="eager" if official else "sdpa")
      self.official = official
      self.wte = nn.Embedding(vocab, d)
      self.blocks = nn.ModuleList(GPT2Block(gcfg, layer_idx=i) for i in range(n_layers))
      self.ln_f = nn.LayerNorm(d, eps=gcfg.layer_norm_epsilon)
      self.attn_implementation = gcfg._attn_implementation  # pylint: disable=protected-access

    def forward(self, tokens_BxT, read_pos_B, target_B):
      b, t = tokens_BxT.shape
      mask_Bx1xTxT = None
      if not self.official:
        allowed_BxTxT = torch.tril(torch.ones(t, t, dtype=torch.bool))[None] & (tokens_BxT != 0)[:, None, :]
        mask_Bx1xTxT = torch.zeros(allowed_BxTxT.shape, dtype=torch.float32).masked_fill(
            ~allowed_BxTxT, torch.finfo(torch.float32).min)[:, None]
      h_BxTxD = self.wte(tokens_BxT)
      for _ in range(n_loops):
        for block in self.blocks:
          h_BxTxD = block(h_BxTxD, attention_mask=mask_Bx1xTxT)
      if self.official:
        logits_BxTxV = self.ln_f(h_BxTxD) @ self.wte.weight.T
        return nn.functional.cross_entropy(logits_BxTxV[torch.arange(b), read_pos_B], target_B)
      h_BxD = self.ln_f(h_BxTxD[torch.arange(b), read_pos_B])
      return nn.functional.cross_entropy(h_BxD @ self.wte.weight.T, target_B)

  threads = len(os.sched_getaffinity(0))
  tensors = [torch.from_numpy(batch[k]).long() for k in ("tokens", "read_pos", "target")]
  runs = {}
  variants = [("torch eager", None, threads, False), ("torch eager, official step", None, threads, True)]
  variants += [("torch eager, 1 thread", None, 1, False)] if single_thread else []
  variants += [(f"torch.compile({m})", m, threads, False) for m in compile_modes]
  for name, mode, n_threads, official in variants:
    torch.manual_seed(0)
    model = LoopedGPT2(official)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": train_cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=train_cfg.lr, betas=(train_cfg.b1, train_cfg.b2))
    loss_of = model if mode is None else torch.compile(model, mode=mode)

    def run(n: int, loss_of=loss_of, opt=opt, n_threads=n_threads):
      torch.set_num_threads(n_threads)
      for _ in range(n):
        opt.zero_grad(set_to_none=True)
        loss_of(*tensors).backward()
        opt.step()
    if mode is not None:
      try:
        run(1)
      except Exception as e:  # pylint: disable=broad-except  (inductor needs a working C++ toolchain)
        print(f"  {name} does not run here: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
        continue
    runs[name] = run
    print(f"  {name}: torch {torch.__version__}, {n_threads} threads, attention {model.attn_implementation}")
  return runs


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shapes", default="tiny,cpu,paper", help=f"comma-separated, from {', '.join(SHAPES)}")
  parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (the median is over all steps)")
  parser.add_argument("--steps", type=int, default=0, help="steps per round (0 = about 1 s of work, at least 1)")
  parser.add_argument("--paper-seq-len", type=int, default=50, help="T of the paper shape")
  parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
  parser.add_argument("--no-single-thread", action="store_true", help="skip eager torch on one thread")
  parser.add_argument("--variants", default=",".join(VARIANTS),
                      help=f"looprec rows, comma-separated from {', '.join(VARIANTS)} (looprec = the default)")
  args = parser.parse_args()
  names = args.shapes.split(",")
  variants = ["looprec"] + [v for v in VARIANTS if v != "looprec" and v in args.variants.split(",")]
  for n in names:
    if n not in SHAPES:
      print(f"error: unknown shape {n!r} (choose from {', '.join(SHAPES)})", file=sys.stderr)
      sys.exit(2)
  unknown = set(args.variants.split(",")) - set(VARIANTS)
  if unknown:
    print(f"error: unknown variant {sorted(unknown)[0]!r} (choose from {', '.join(VARIANTS)})", file=sys.stderr)
    sys.exit(2)
  train_cfg = TrainConfig(grad_clip=0.0, warmup_steps=0)
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {len(os.sched_getaffinity(0))} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at start")
  peaks = {"looprec": 0.0, "torch": 0.0}

  def measure_peaks():  # the best seen so far: a measurement disturbed by other work only reads low
    peaks["looprec"] = max(peaks["looprec"], throughput.cpu_matmul_peak.__wrapped__("float32"))
    peaks["torch"] = max(peaks["torch"], torch_matmul_peak())
  for name in names:
    shape = SHAPES[name]
    if name == "paper":
      shape = shape[:5] + (args.paper_seq_len,) + shape[6:]
    d, h, n_layers, n_loops, b, t, v = shape
    print(f"\n{name}: d={d} heads={h} L={n_layers} R={n_loops} B={b} T={t} vocab={v}")
    batch = make_batch(np.random.default_rng(0), b, t, v)
    runs, flops = {}, {}
    for v in variants:
      runs[v], flops[v] = looprec_step(shape, train_cfg, batch, v)
    runs.update(torch_steps(shape, train_cfg, batch, [] if args.no_compile else ["default"],
                            not args.no_single_thread))
    print(f"  {flops['looprec'] / 1e9:.1f} GFLOP per step")
    measure_peaks()
    for run in runs.values():  # compile / warm up
      run(1)
    steps = args.steps
    if not steps:
      start = time.perf_counter()
      runs["looprec"](1)
      steps = max(1, int(1.0 / (time.perf_counter() - start)))
    times = {k: [] for k in runs}
    for _ in range(args.rounds):
      for k, run in runs.items():
        start = time.perf_counter()
        run(steps)
        times[k].append((time.perf_counter() - start) / steps * 1e3)
    measure_peaks()
    ms = {k: statistics.median(v) for k, v in times.items()}
    best = min(m for k, m in ms.items() if k in VARIANTS)
    for k, m in ms.items():
      rate = flops["looprec"] / m * 1e3
      peak = peaks["looprec" if k in VARIANTS else "torch"]
      if k in VARIANTS:
        ratio = "" if k == "looprec" else f"   {ms['looprec'] / m:.2f}x the default's speed"
      else:
        ratio = f"   looprec speed-up {m / ms['looprec']:.2f}x, fastest looprec row {m / best:.2f}x"
      print(f"  {k:>30}: {m:9.1f} ms/step  {rate / 1e9:5.0f} GFLOP/s ({rate / peak:4.0%} of matmul){ratio}")
    print(f"  load average {os.getloadavg()[0]:.1f}")
  print("best float32 matmul rate (2048^3, best of the measurements before and after each shape): "
        + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items()))


if __name__ == "__main__":
  main()
