"""Rust in the terminal front end, under a real pseudo-terminal: a multi-line Rust
cell reaches the trained model, and Ctrl-C stops an endless loop without losing it."""

import os
import pathlib
import time

import pexpect

ROOT = pathlib.Path(__file__).resolve().parents[2]
TCHLAB = ROOT / "target" / "release" / "tchlab"
PROMPT = r"tchlab \[cpu · step (\d+)\]> "


def test_rust_lines_reach_the_model_and_ctrl_c_stops_a_loop(tmp_path):
    # The real HOME: cargo and rustup live there, and the evcxr work directory is warm.
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path), TERM="xterm", TCHLAB_IMAGES="none")
    child = pexpect.spawn(str(TCHLAB), env=env, encoding="utf-8", timeout=600, dimensions=(40, 160))
    child.expect(PROMPT)
    for line in ["%device cpu", "%data synth reverse --length 5", "%model gpt --layers 1 --heads 2 --dim 32", "%train 3"]:
        child.sendline(line)
    child.expect("3/3")
    child.expect(PROMPT)
    # An open bracket continues the cell on the next line.
    child.sendline("let steps = {")
    child.sendline("    live::info()?.step * 14")
    child.sendline("};")
    child.expect(PROMPT)
    child.sendline("steps")
    child.expect("\r\n42\r\n")
    child.expect(PROMPT)
    child.sendline("loop { std::hint::spin_loop(); }")
    time.sleep(4)  # compiled and running
    child.sendintr()
    child.expect("KeyboardInterrupt")
    child.expect("variables are gone: steps")
    child.expect(PROMPT)
    child.sendline("live::info()?.step")
    child.expect("\r\n3\r\n")
    child.expect(PROMPT)
    child.sendline("%step")
    child.expect("step +4")
    child.expect(PROMPT)
    child.sendline("%save " + str(tmp_path / "model"))
    child.expect("saved training checkpoint at step 4")
    child.expect(PROMPT)
    # rustyline reads Ctrl-D once the terminal is in raw mode again, a moment after the prompt.
    time.sleep(0.5)
    child.sendeof()
    child.expect(pexpect.EOF)
