#!/usr/bin/env python3
"""PyTorch's scaled_dot_product_attention on the shapes of seqpar_flash_bench_gpu, for comparison
in the same run: bf16, hidden 2048 (H = 2048 / D), B * S = 32K tokens, S = 1K to 32K, D 64 and
128, causal or not; forward and backward TFLOP/s with the same FLOP counts (forward 4 B H S^2 D,
half when causal; backward 2.5 times forward). Needs python3 with torch and a GPU.

    python3 bench/sdpa_bench.py [--json out.json]
"""
import argparse
import json
import math

import torch
import torch.nn.functional as F

from torch_timing import timed

HIDDEN, TOKENS = 2048, 32 * 1024


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    rows = []
    print(f"{'pass':9} {'S':>6} {'D':>4} {'causal':>6} {'time ms':>9} {'TFLOP/s':>8}")
    for causal in (False, True):
        for d in (64, 128):
            s = 1024
            while s <= 32 * 1024:
                b, h = TOKENS // s, HIDDEN // d
                q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                           for _ in range(3))
                scale = 1.0 / math.sqrt(d)
                o = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
                grad = torch.randn_like(o)
                fwd = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale))
                bwd = timed(lambda: torch.autograd.grad(o, (q, k, v), grad, retain_graph=True))
                flops = 4.0 * b * h * s * s * d * (0.5 if causal else 1.0)
                for name, t, f in (("forward", fwd, flops), ("backward", bwd, 2.5 * flops)):
                    rows.append({"pass": name, "S": s, "D": d, "causal": causal, "seconds": t, "tflops": f / t / 1e12})
                    print(f"{name:9} {s:6} {d:4} {int(causal):6} {t * 1e3:9.3f} {f / t / 1e12:8.1f}")
                s *= 2
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=1)


if __name__ == "__main__":
    main()
