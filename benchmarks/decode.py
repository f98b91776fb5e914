"""KV-cache bytes per token and decode speed of every cache policy (`looprec.decode`), for this checkout and, with
--against REF, for another commit side by side in one run (`side_by_side`: rounds alternate between the trees;
median of the rounds).

    .venv/bin/python benchmarks/decode.py                 # d=64, N=2 layers: bytes at R=4,8,16,32; tokens/s at R=4
    .venv/bin/python benchmarks/decode.py --widths 64,256,512 --policies per_loop,melt --against HEAD~1 --rounds 3

Bytes per token are the cache's real layout (every site, keys and values, float32). Tokens/s: greedy decoding
of `--new` tokens after a 4-token prompt with random weights, at batch 1 and 64, timed on the second call of the
compiled program (the first compiles), median of `--repeats`, for each model width in `--widths` (heads of 16
channels). melt runs with untrained gates (logit -2). Each row also hashes the tokens written at batch 64; trees
that write different tokens are reported (exit 1). A row "matmuls only" per width bounds what batching can give on
the machine: the same number of positions through the decode step's weight matmuls alone (per position 2 layers x
R loops of x @ W_qkv, x @ W_out, x @ W_fc, x @ W_proj), nothing else: its B=64 / B=1 is the ratio a decoder doing
no other work would get.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys

import side_by_side

POLICIES = ("per_loop", "first_loop", "last_loop", "cycle:4", "melt")
BATCHES = (1, 64)


def parse():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--loops", type=int, default=4, help="R of the speed runs")
  ap.add_argument("--new", type=int, default=16, help="tokens written per row")
  ap.add_argument("--repeats", type=int, default=3, help="timed calls per round")
  ap.add_argument("--widths", default="64", help="comma-separated d_model values")
  ap.add_argument("--policies", default=",".join(POLICIES))
  ap.add_argument("--against", help="a git ref to time side by side with this checkout")
  ap.add_argument("--rounds", type=int, default=1, help="alternating rounds (each: every row, every tree)")
  ap.add_argument("--out", default=None, help="also write the results here as JSON")
  ap.add_argument("--once", action="store_true", help=argparse.SUPPRESS)  # one round of this tree, as JSON
  return ap.parse_args()


def measure(args) -> dict:
  """row -> bytes per token at R = 4..32, tokens/s per batch, a hash of the batch-64 tokens (this process)."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from looprec import decode, melt, models  # pylint: disable=import-outside-toplevel
  from looprec.config import ModelConfig  # pylint: disable=import-outside-toplevel
  rows = {}
  for d in (int(w) for w in args.widths.split(",")):
    model = models.build(ModelConfig(d_model=d, n_heads=max(1, d // 16), n_layers=2, max_positions=64), 64)
    params = model.init(jax.random.PRNGKey(0), 8)
    params = {**params, "melt": melt.init_gates(model)}
    prompt = np.random.default_rng(0).integers(1, model.vocab_size, (BATCHES[-1], 4)).astype(np.int32)
    for policy in args.policies.split(","):
      tokens = decode.generate(model, params, prompt, args.new, args.loops, policy)
      rows[f"d={d} {policy}"] = {
          "bytes_per_token": {r: decode.bytes_per_token(model, policy, r) for r in (4, 8, 16, 32)},
          "tokens_per_s": {b: decode.tokens_per_second(model, params, policy, b, args.loops, args.new, args.repeats)
                           for b in BATCHES},
          "tokens": hashlib.sha256(np.asarray(tokens).tobytes()).hexdigest()[:16]}
    rows[f"d={d} matmuls only"] = {"tokens_per_s": {b: matmul_tokens_per_second(d, b, args.loops, args.new,
                                                                                  args.repeats) for b in BATCHES}}
  return {"platform": jax.devices()[0].platform, "rows": rows}


def matmul_tokens_per_second(d: int, batch: int, n_loops: int, n_new: int, repeats: int, prompt_len: int = 4) -> float:
  """Tokens/s of a program that runs only the decode step's weight matmuls (2 layers, d_ff = 4 d) at each of the
  positions `decode.tokens_per_second` runs (prompt_len + n_new - 1) for `batch` rows, timed and counted (n_new
  tokens a row) as it does: an upper bound on what the full step can reach."""
  import time  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  shapes = [(d, 3 * d), (d, d), (d, 4 * d), (4 * d, d)] * 2
  ws = [jax.random.normal(jax.random.PRNGKey(i), s) * 0.02 for i, s in enumerate(shapes)]

  @jax.jit
  def run(x_BxD, ws):
    def loop(x_BxD, _):
      for qkv, out, fc, proj in (ws[:4], ws[4:]):
        x_BxD = x_BxD + (x_BxD @ qkv)[:, :d] @ out
        x_BxD = x_BxD + jnp.tanh(x_BxD @ fc) @ proj
      return x_BxD, None
    position = lambda x_BxD, _: (jax.lax.scan(loop, x_BxD, None, length=n_loops)[0], None)
    return jax.lax.scan(position, x_BxD, None, length=prompt_len + n_new - 1)[0]

  x_BxD = jnp.ones((batch, d))
  run(x_BxD, ws).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    run(x_BxD, ws).block_until_ready()
    times.append(time.perf_counter() - start)
  return batch * n_new / statistics.median(times)


def main():
  args = parse()
  if args.once:
    print(json.dumps(measure(args)))
    return 0
  passed = [f"--{k}={v}" for k, v in vars(args).items() if k in ("loops", "new", "repeats", "widths", "policies")]
  runs = side_by_side.measure(args.against, "decode.py", passed, args.rounds)
  first = runs[side_by_side.HERE][0]
  speed = lambda tree, row, b: statistics.median(r["rows"][row]["tokens_per_s"][str(b)] for r in runs[tree])
  print(f"| tree | width, policy | bytes/token R=4 | R=8 | R=16 | R=32 | tokens/s B=1 | B=64 | B=64 / B=1 |  "
        f"({first['platform']}, R={args.loops}, 2 layers, median of {args.rounds} round(s))")
  print("|---|---|---|---|---|---|---|---|---|")
  same = True
  for row, cells in first["rows"].items():
    for tree in runs:
      b, s1, s64 = runs[tree][0]["rows"][row].get("bytes_per_token", {}), speed(tree, row, 1), speed(tree, row, 64)
      same &= runs[tree][0]["rows"][row].get("tokens") == cells.get("tokens")
      print(f"| {tree} | {row} | " + " | ".join(str(b.get(str(r), "")) for r in (4, 8, 16, 32))
            + f" | {s1:.0f} | {s64:.0f} | {s64 / s1:.1f} |")
  print(f"the same tokens in every tree: {same}")
  side_by_side.save(args.out, args, runs)
  return 0 if same else 1


if __name__ == "__main__":
  sys.exit(main())
