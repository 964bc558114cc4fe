"""`make bench`: tchlab against its peers, side by side in one run.

Training step time of a GPT (vocab 512, dropout 0, AdamW, clip 1.0, f32): tchlab's
Trainer (target/release/examples/bench_train) against HF GPT2LMHeadModel trained
eagerly by PyTorch from Python, the same libtorch underneath. Prints both times, the
ratio, tokens/s, and model FLOP utilisation against the matmul peak measured here.
"""

import json
import os
import platform
import subprocess
import sys
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = [  # (layers, heads, dim, ctx, batch, measured steps)
    (4, 4, 128, 128, 16, 30),
    (6, 6, 384, 256, 8, 8),
]
WARMUP_STEPS = 3


def matmul_peak_flops() -> float:
    """Best float32 matmul throughput of this machine's libtorch, in FLOP/s."""
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - start))
    return best


def flops_per_token(params: int, layers: int, dim: int, ctx: int) -> float:
    # nanoGPT's estimate (PaLM appendix B): 6N for the weights, 12·L·D·T for attention.
    return 6 * params + 12 * layers * dim * ctx


def pytorch_step_ms(layers, heads, dim, ctx, batch, steps):
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=512, n_positions=ctx, n_embd=dim, n_layer=layers, n_head=heads,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config).train()
    named = list(model.named_parameters())
    groups = [{"params": [p for _, p in named if p.dim() >= 2], "weight_decay": 0.01},
              {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=1e-3)

    def step():
        ids = torch.randint(0, 512, (batch, ctx + 1))
        logits = model(ids[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 512), ids[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    for _ in range(WARMUP_STEPS):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return 1000 * (time.perf_counter() - start) / steps


def main() -> None:
    binary = os.path.join(ROOT, "target/release/examples/bench_train")
    peak = matmul_peak_flops()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; float32 matmul peak {peak / 1e9:.1f} GFLOP/s")
    print()
    header = f"{'model':<26} {'tchlab ms':>10} {'PyTorch ms':>11} {'ratio':>6} {'tchlab tok/s':>13} {'PyTorch tok/s':>14} {'tchlab MFU':>11} {'PyTorch MFU':>12}"
    print("Training step (GPT, vocab 512, AdamW, f32, CPU); ratio = PyTorch time / tchlab time")
    print(header)
    print("-" * len(header))
    for layers, heads, dim, ctx, batch, steps in CONFIGS:
        out = subprocess.run([binary, *map(str, (layers, heads, dim, ctx, batch, steps))], check=True, capture_output=True, text=True)
        ours = json.loads(out.stdout.strip().splitlines()[-1])
        theirs_ms = pytorch_step_ms(layers, heads, dim, ctx, batch, steps)
        tokens = batch * ctx
        fpt = flops_per_token(ours["params"], layers, dim, ctx)
        mfu = lambda ms: fpt * tokens / (ms / 1000) / peak
        name = f"L{layers} H{heads} D{dim} T{ctx} B{batch}"
        print(f"{name:<26} {ours['ms_per_step']:>10.1f} {theirs_ms:>11.1f} {theirs_ms / ours['ms_per_step']:>6.2f} "
              f"{ours['tokens_per_s']:>13.0f} {tokens / theirs_ms * 1000:>14.0f} {mfu(ours['ms_per_step']):>10.1%} {mfu(theirs_ms):>11.1%}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
