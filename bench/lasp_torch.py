#!/usr/bin/env python3
"""A chunked linear attention with per-head decay written in PyTorch, on the shapes of
seqpar_lasp_bench_gpu, for comparison in the same run: bf16, B = 1, H = 16, D = E = 64,
lambda = 0.99, S = 8K to 512K tokens on one GPU; tokens per second of the forward pass and of
forward + backward (autograd). Within a chunk of C tokens it computes ((Q K^T) * M) V with
M[i][j] = lambda^(i-j) for all chunks at once; across chunks it carries the fp32 D x E state in a
loop, as the usual PyTorch implementations do. Needs python3 with torch and a GPU.

    python3 bench/lasp_torch.py [--chunk 256] [--json out.json]
"""
import argparse
import json

import torch

from torch_timing import timed

B, H, D, E, LAMBDA = 1, 16, 64, 64, 0.99


def chunked_linear_attention(q, k, v, lam, chunk):
    """o_t = sum_{j <= t} lam^(t-j) (q_t . k_j) v_j; q, k [B, H, S, D], v [B, H, S, E], lam [H]."""
    b, h, s, d = q.shape
    e = v.shape[-1]
    n = s // chunk
    q, k, v = (x.reshape(b, h, n, chunk, x.shape[-1]) for x in (q, k, v))
    idx = torch.arange(chunk, device=q.device, dtype=torch.float32)
    log_lam = torch.log(lam.float()).view(h, 1, 1)
    gap = idx.view(-1, 1) - idx.view(1, -1)
    mask = torch.exp(gap.clamp(min=0) * log_lam) * (gap >= 0)  # [H, C, C]
    intra = ((q @ k.transpose(-1, -2)).float() * mask.view(1, h, 1, chunk, chunk)).to(q.dtype) @ v
    q_weight = torch.exp((idx + 1) * log_lam).view(1, h, 1, chunk, 1)  # lambda^(i+1)
    k_weight = torch.exp((chunk - 1 - idx) * log_lam).view(1, h, 1, chunk, 1)  # lambda^(C-1-i)
    contrib = (k.float() * k_weight).transpose(-1, -2) @ v.float()  # [B, H, n, D, E]
    chunk_decay = torch.exp(chunk * log_lam).view(1, h, 1, 1)
    state = torch.zeros(b, h, d, e, device=q.device, dtype=torch.float32)
    inter = []
    for c in range(n):
        inter.append(((q[:, :, c].float() * q_weight[:, :, 0]) @ state).to(q.dtype))
        state = chunk_decay * state + contrib[:, :, c]
    o = intra + torch.stack(inter, dim=2)
    return o.reshape(b, h, s, e)


def check(chunk):
    """The chunked form against the plain recurrence on a short sequence, in float64."""
    s = 4 * chunk
    q, k, v = (torch.randn(1, 2, s, 8, device="cuda", dtype=torch.float64) for _ in range(3))
    lam = torch.tensor([1.0, 0.9], device="cuda", dtype=torch.float64)
    got = chunked_linear_attention(q, k, v, lam, chunk)
    want = torch.zeros_like(v)
    for hh in range(2):
        state = torch.zeros(8, 8, device="cuda", dtype=torch.float64)
        for t in range(s):
            state = lam[hh] * state + torch.outer(k[0, hh, t], v[0, hh, t])
            want[0, hh, t] = q[0, hh, t] @ state
    err = (got.double() - want).abs().max().item() / want.abs().max().item()
    assert err < 1e-4, f"chunked linear attention is off by {err}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunk", type=int, default=256, help="tokens per chunk (default 256)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    check(args.chunk)
    rows = []
    print(f"{'pass':17} {'S':>7} {'time ms':>9} {'Mtokens/s':>10}")
    lam = torch.full((H,), LAMBDA, device="cuda")
    for kt in (8, 32, 128, 512):
        s = kt * 1024
        q, k, v = (torch.randn(B, H, s, x, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for x in (D, D, E))
        grad = torch.randn(B, H, s, E, device="cuda", dtype=torch.bfloat16)

        def forward():
            with torch.no_grad():
                chunked_linear_attention(q, k, v, lam, args.chunk)

        def forward_backward():
            o = chunked_linear_attention(q, k, v, lam, args.chunk)
            torch.autograd.grad(o, (q, k, v), grad)

        for name, fn in (("forward", forward), ("forward_backward", forward_backward)):
            t = timed(fn, iters=5)
            rows.append({"pass": name, "S": s, "seconds": t, "tokens_per_s": s / t})
            print(f"{name:17} {s:7} {t * 1e3:9.3f} {s / t / 1e6:10.2f}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=1)


if __name__ == "__main__":
    main()
