"""What every fault test does: start a kernel with the fault points armed (`lab`: one
per test module, trained a few steps), read a result, take the training state (step,
optimiser steps, a checksum of every weight), run a hostile cell and check it was
refused cleanly and changed nothing, interrupt a cell. (Not a conftest.py: the tests
import `conftest` from tests/, which one here would shadow.)"""

import os
import time

import pytest
from jupyter_client.manager import start_new_kernel

from cells import RESULT, execute

TIMEOUT = 120
SETUP = "%device cpu\n%seed 0\n%data synth reverse --length 4\n%model gpt --layers 1 --heads 2 --dim 32\n%set batch=8\n%train 5"


def start(env_extra=None):
    env = dict(os.environ, TCHLAB_FAULTS="1", **(env_extra or {}))
    return start_new_kernel(kernel_name="tchlab", startup_timeout=TIMEOUT, env=env)


@pytest.fixture(scope="module")
def lab():
    km, kc = start()
    reply, _ = execute(kc, SETUP, timeout=TIMEOUT)
    assert reply["content"]["status"] == "ok", reply["content"]
    yield km, kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def result(outputs):
    results = [m for m in outputs if m["msg_type"] == "execute_result"]
    return results[-1]["content"]["data"][RESULT] if results else None


def state(kc):
    reply, outputs = execute(kc, "%status --checksum")
    assert reply["content"]["status"] == "ok", reply["content"]
    s = result(outputs)
    return s["step"], s["optimizer_steps"], s["weights_checksum"], s["data"], s["model"], s["parameters"]


def rss_mb(km):
    with open(f"/proc/{km.provisioner.process.pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def refused(kc, code, ename, *contains, timeout=TIMEOUT):
    """Runs a hostile cell: it must fail with `ename` and a message holding each of
    `contains`; then the training state is unchanged and the next cell works."""
    before = state(kc)
    started = time.time()
    reply, _ = execute(kc, code, timeout=timeout)
    took = time.time() - started
    content = reply["content"]
    assert content["status"] == "error", f"{code!r} was accepted: {content}"
    assert content["ename"] == ename, f"{code!r}: {content['ename']}: {content['evalue']}"
    for text in contains:
        assert text in content["evalue"], f"{code!r}: {text!r} not in {content['evalue']!r}"
    assert state(kc) == before, f"{code!r} changed the session"
    alive, outputs = execute(kc, "%echo alive")
    assert alive["content"]["status"] == "ok" and any("alive" in m["content"].get("text", "") for m in outputs)
    return content, took


def interrupted(km, kc, code, wait=0.5):
    """Starts `code`, interrupts it after `wait` seconds; returns its reply and how long
    the interrupt took."""
    msg_id = kc.execute(code)
    while True:
        msg = kc.get_iopub_msg(timeout=TIMEOUT)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status" and msg["content"]["execution_state"] == "busy":
            break
    time.sleep(wait)
    asked = time.time()
    km.interrupt_kernel()
    while True:
        reply = kc.get_shell_msg(timeout=TIMEOUT)
        if reply["parent_header"]["msg_id"] == msg_id:
            return reply["content"], time.time() - asked
