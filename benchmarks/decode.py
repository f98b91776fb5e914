"""KV-cache bytes per token and decode speed of every cache policy (`looprec.decode`).

    .venv/bin/python benchmarks/decode.py                 # d=64, N=2 layers: bytes at R=4,8,16,32; tokens/s at R=4
    .venv/bin/python benchmarks/decode.py --out bench.json

Bytes per token are the cache's real layout (every site, keys and values, float32). Tokens/s: greedy decoding
of `--new` tokens after a 4-token prompt with random weights, at batch 1 and 64, timed on the second call of the
compiled program (the first compiles), median of `--repeats`. melt runs with untrained gates (logit -2).
"""
from __future__ import annotations

import argparse
import json

import jax

from looprec import decode, melt, models
from looprec.config import ModelConfig

POLICIES = ("per_loop", "first_loop", "last_loop", "cycle:4", "melt")


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--loops", type=int, default=4, help="R of the speed runs")
  ap.add_argument("--new", type=int, default=16, help="tokens written per row")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--out", default=None, help="also write the results here as JSON")
  args = ap.parse_args()
  model = models.build(ModelConfig(d_model=64, n_heads=4, n_layers=2, max_positions=64), 64)
  params = model.init(jax.random.PRNGKey(0), 8)
  params = {**params, "melt": melt.init_gates(model)}
  rows = {}
  for policy in POLICIES:
    pol = decode.parse_policy(policy)
    rows[policy] = {"bytes_per_token": {r: decode.bytes_per_token(model, pol, r) for r in (4, 8, 16, 32)},
                    "tokens_per_s": {b: decode.tokens_per_second(model, params, policy, b, args.loops, args.new,
                                                                 args.repeats) for b in (1, 64)}}
  print(f"| policy | bytes/token R=4 | R=8 | R=16 | R=32 | tokens/s B=1 | B=64 | B=64 / B=1 |  ({jax.devices()[0].platform}, "
        f"R={args.loops})")
  print("|---|---|---|---|---|---|---|---|")
  for policy, row in rows.items():
    b, s = row["bytes_per_token"], row["tokens_per_s"]
    print(f"| {policy} | " + " | ".join(str(b[r]) for r in (4, 8, 16, 32))
          + f" | {s[1]:.0f} | {s[64]:.0f} | {s[64] / s[1]:.1f} |")
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump({"platform": jax.devices()[0].platform, "loops": args.loops, "new": args.new, "policies": rows}, f,
                indent=1)


if __name__ == "__main__":
  main()
