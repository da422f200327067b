"""Scratch (not committed): bf16 rows of 2048, plain and as block_size=2048 of rows of 32768, timed in alternation."""
import sys
import torch
sys.path.insert(0, "bench")
from gpu_common import clone_gbps, graph_seconds
from hlwq_kernels import fwht

T = 1 << 28
g = torch.Generator(device="cuda").manual_seed(1)
a = torch.randn(T // 2048, 2048, device="cuda", generator=g).to(torch.bfloat16)
b = torch.randn(T // 32768, 32768, device="cuda", generator=g).to(torch.bfloat16)
calls = {
    "plain 2048 (x of 2048)": lambda: fwht(a),
    "block 2048 (x of 32768)": lambda: fwht(b, block_size=2048),
    "plain 2048 (the 32768 x viewed)": lambda: fwht(b.view(-1, 2048)),
    "block 2048 (the 2048 x viewed)": lambda: fwht(a.view(-1, 32768), block_size=2048),
}
for rnd in range(4):
    c = clone_gbps(a)
    names = list(calls) if rnd % 2 == 0 else list(calls)[::-1]
    for name in names:
        s = graph_seconds(calls[name], 10.0)
        gbps = 2 * T * 2 / s / 1e9
        print(f"round {rnd} {name}: {gbps:.0f} GB/s, {100 * gbps / c:.1f}% of clone ({c:.0f})", flush=True)
