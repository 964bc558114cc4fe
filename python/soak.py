"""`make soak`: many mixed requests through a real kernel (jupyter_client), with the
kernel's resident memory sampled along the way.

Each round is one of: a command that succeeds, a command that fails, a training step,
a completion and an inspection, or a long command interrupted after a moment. Every
reply is checked (nothing lost, the right status), and at the end the step count and
the history still agree. Prints RSS samples and the growth after warm-up.

usage: python python/soak.py [EXECUTES]   (default 10000)
"""

import os
import pathlib
import subprocess
import sys
import tempfile
import time

from jupyter_client.manager import start_new_kernel

SETUP = "%device cpu\n%seed 0\n%data synth reverse --length 4\n%model gpt --layers 1 --heads 2 --dim 32\n%set batch=8"
OK = ["%echo soak", "%status", "%hparams", "%eval", '%generate "12" --max-tokens 4', "%tokenize 123", "%weights wte", "%runs"]
FAIL = ["%bogus", "%set lr=fast", "%generate", "%model gpt --vocab 2", "%data text /dev/zero", '%echo "open']


def rss_mb(km):
    with open(f"/proc/{km.provisioner.process.pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def run(kc, code, timeout=60):
    msg_id = kc.execute(code, stop_on_error=False)
    while True:
        reply = kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"]["msg_id"] == msg_id:
            return reply["content"]


def drain(kc):
    while True:
        try:
            kc.get_iopub_msg(timeout=0)
        except Exception:
            return


ROOT = pathlib.Path(__file__).resolve().parents[1]


def main():
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    # The kernel of this checkout, installed into a private prefix.
    prefix = tempfile.mkdtemp(prefix="tchlab-soak-kernelspec-")
    subprocess.run([str(ROOT / "target/release/tchlab-kernel"), "install", "--prefix", prefix], check=True, capture_output=True)
    os.environ["JUPYTER_PATH"] = os.path.join(prefix, "share", "jupyter")
    km, kc = start_new_kernel(kernel_name="tchlab", startup_timeout=60)
    samples = []
    counts = {"ok": 0, "error": 0, "interrupted": 0, "completions": 0, "steps": 0}
    started = time.time()
    try:
        assert run(kc, SETUP)["status"] == "ok"
        for i in range(total):
            kind = i % 50
            if kind == 49:
                msg_id = kc.execute("%train 100000000")
                time.sleep(0.05)
                km.interrupt_kernel()
                while True:
                    reply = kc.get_shell_msg(timeout=60)
                    if reply["parent_header"]["msg_id"] == msg_id:
                        break
                assert reply["content"]["ename"] == "KeyboardInterrupt", reply["content"]
                counts["interrupted"] += 1
            elif kind % 10 == 9:
                kc.complete("%tra", 4)
                kc.get_shell_msg(timeout=60)
                kc.inspect("%train 10", 3)
                kc.get_shell_msg(timeout=60)
                counts["completions"] += 1
            elif kind % 10 == 8:
                content = run(kc, FAIL[i % len(FAIL)])
                assert content["status"] == "error", content
                counts["error"] += 1
            elif kind == 0:
                assert run(kc, "%step")["status"] == "ok"
                counts["steps"] += 1
            else:
                content = run(kc, OK[i % len(OK)])
                assert content["status"] == "ok", content
                counts["ok"] += 1
            drain(kc)
            if i % 500 == 0 or i == total - 1:
                samples.append((i, rss_mb(km)))
        status = run(kc, "%status")
        assert status["status"] == "ok"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    seconds = time.time() - started
    print(f"{total} executes in {seconds:.0f} s: {counts}")
    print("| execute | kernel RSS (MB) |\n| ---: | ---: |")
    for i, mb in samples:
        print(f"| {i} | {mb:.0f} |")
    warm = next(mb for i, mb in samples if i >= total // 10)
    growth = (samples[-1][1] - warm) / warm * 100
    print(f"growth after warm-up (from execute {total // 10} to the end): {growth:+.1f} %")


if __name__ == "__main__":
    main()
