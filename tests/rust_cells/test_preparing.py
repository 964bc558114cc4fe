"""When a Rust cell has to wait for the compile of tch and the library (a work directory
never built, or built from an older library), the kernel and the REPL say so in the
cell's output at once, with an estimate, and the wait can be interrupted without
losing the session. Each test points the kernel at a work directory of its own
(TCHLAB_EVCXR_DIR), made cold or stale on purpose, and kills the compile it started
with the front end's process group."""

import json
import os
import pathlib
import signal
import time

import pexpect
from jupyter_client.manager import start_new_kernel

from cells import RESULT, execute

ROOT = pathlib.Path(__file__).resolve().parents[2]
TCHLAB = ROOT / "target" / "release" / "tchlab"
PROMPT = r"tchlab \[cpu · step (\d+)\]> "


def stale_work_directory(root):
    """A work directory built (it has a target/) by this very checkout and toolchain,
    according to the record `make rust-cells` left in the real one, but from library
    files of another time, whose compile took 150 s."""
    cache = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache")
    record = json.loads((cache / "tchlab" / "evcxr" / "0" / ".tchlab-build.json").read_text())
    record.update(files="0", library_seconds=120.0)
    slot = root / "0"
    (slot / "target").mkdir(parents=True)
    (slot / ".tchlab-build.json").write_text(json.dumps(record))
    return root


def kill_group(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stderr_text(outputs):
    return "".join(m["content"]["text"] for m in outputs if m["msg_type"] == "stream" and m["content"]["name"] == "stderr")


def test_the_kernel_says_a_cold_compile_is_coming_and_an_interrupt_keeps_the_session(tmp_path):
    env = dict(os.environ, TCHLAB_EVCXR_DIR=str(tmp_path / "evcxr"))
    km, kc = start_new_kernel(kernel_name="tchlab", startup_timeout=60, env=env)
    try:
        reply, _ = execute(kc, "%device cpu\n%seed 0\n%data synth reverse --length 5\n%model gpt --layers 1 --heads 2 --dim 32")
        assert reply["content"]["status"] == "ok"
        msg_id = kc.execute("let x = 1;")
        notice, started = "", time.time()
        while "preparing Rust cells" not in notice:
            msg = kc.get_iopub_msg(timeout=30)
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                notice += msg["content"]["text"]
        assert time.time() - started < 10, "the notice comes at once"
        assert "compiling tch and tchlab, about" in notice and "minutes, once" in notice, notice
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=30)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt", reply["content"]
        assert "session is intact" in reply["content"]["evalue"]
        reply, outputs = execute(kc, "%status")
        assert reply["content"]["status"] == "ok"
        assert [m for m in outputs if m["msg_type"] == "execute_result"][0]["content"]["data"][RESULT]["model"] is not None
    finally:
        pid = km.provisioner.pid if km.provisioner else None
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        if pid:
            kill_group(pid)


def test_the_kernel_says_when_the_library_changed_since_the_last_build(tmp_path):
    env = dict(os.environ, TCHLAB_EVCXR_DIR=str(stale_work_directory(tmp_path / "evcxr")))
    km, kc = start_new_kernel(kernel_name="tchlab", startup_timeout=60, env=env)
    try:
        msg_id = kc.execute("let x = 1;")
        notice = ""
        while "about" not in notice:
            msg = kc.get_iopub_msg(timeout=30)
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                notice += msg["content"]["text"]
        assert "preparing Rust cells" in notice and "compiles again; about 2 minutes" in notice, notice
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=30)
        assert reply["content"]["ename"] == "KeyboardInterrupt", reply["content"]
        reply, _ = execute(kc, "%echo still here")
        assert reply["content"]["status"] == "ok"
    finally:
        pid = km.provisioner.pid if km.provisioner else None
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        if pid:
            kill_group(pid)


def test_the_repl_says_so_too_and_ctrl_c_keeps_the_session(tmp_path):
    root = stale_work_directory(tmp_path / "evcxr")
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path), TERM="xterm", TCHLAB_IMAGES="none", TCHLAB_EVCXR_DIR=str(root))
    child = pexpect.spawn(str(TCHLAB), env=env, encoding="utf-8", timeout=30, dimensions=(40, 200))
    try:
        child.expect(PROMPT)
        child.sendline("%device cpu")
        child.expect(PROMPT)
        child.sendline("let x = 1;")
        child.expect("preparing Rust cells: the tchlab library's source changed")
        child.expect("about 2 minutes")
        child.sendintr()
        child.expect("KeyboardInterrupt")
        child.expect(PROMPT)
        child.sendline("%echo still here")
        child.expect("still here")
        child.expect(PROMPT)
    finally:
        kill_group(child.pid)
        child.close(force=True)
