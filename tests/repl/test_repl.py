"""The `tchlab` terminal front end, driven as a person would: under a real
pseudo-terminal (pexpect) for the interactive session, as a subprocess for scripts."""

import json
import os
import pathlib
import shutil
import subprocess
import time

import pexpect
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TCHLAB = ROOT / "target" / "release" / "tchlab"
PROMPT = r"tchlab \[cpu · step (\d+)\]> "
SETUP = ["%device cpu", "%data synth reverse --length 5", "%model gpt --layers 1 --heads 2 --dim 32", "%set batch=16"]


def environment(home: pathlib.Path) -> dict:
    return dict(os.environ, HOME=str(home), XDG_DATA_HOME=str(home / "data"), TERM="xterm", TCHLAB_IMAGES="none")


def spawn(home: pathlib.Path) -> pexpect.spawn:
    child = pexpect.spawn(str(TCHLAB), env=environment(home), encoding="utf-8", timeout=60, dimensions=(40, 160))
    child.expect(PROMPT)
    return child


def settle(child, n=[0]):
    """Waits until everything typed so far has run: rustyline redraws the prompt while
    a line is edited, so a prompt alone does not prove the command finished."""
    n[0] += 1
    child.sendline(f"%echo settled-{n[0]}")
    child.expect(f"\nsettled-{n[0]}\r\n")
    child.expect(PROMPT)


def run_lines(child, lines):
    for line in lines:
        child.sendline(line)
    settle(child)


def test_tab_completes_a_command_and_ctrl_c_clears_the_line(tmp_path):
    child = spawn(tmp_path)
    child.send("%tra")
    child.send("\t")
    child.expect("%train")
    child.send("\r")
    child.expect("how long\\?")  # the completed line ran: %train without a count
    settle(child)
    child.send("%echo never")
    child.sendintr()
    child.sendline("%echo shown")
    child.expect("\nshown\r\n")
    assert "\nnever\r\n" not in child.before, "Ctrl-C cleared the line instead of running it"
    child.sendeof()
    child.expect(pexpect.EOF)


def test_history_is_kept_across_sessions(tmp_path):
    child = spawn(tmp_path)
    child.sendline("%echo remembered")
    settle(child)
    child.sendeof()
    child.expect(pexpect.EOF)
    assert (tmp_path / "data" / "tchlab" / "history").exists()

    child = spawn(tmp_path)
    child.send("\x1b[A\x1b[A")  # Up twice: past settle's echo, the line before
    child.expect("%echo remembered")
    child.send("\r")
    child.expect("remembered\r\n")
    child.expect(PROMPT)
    child.sendeof()
    child.expect(pexpect.EOF)


def test_ctrl_c_stops_training_at_a_step_boundary_and_keeps_state(tmp_path):
    child = spawn(tmp_path)
    run_lines(child, SETUP)
    child.sendline("%train 100000000")
    child.expect("loss")  # the progress line
    time.sleep(0.5)
    child.sendintr()
    child.expect("KeyboardInterrupt: interrupted after step (\\d+)")
    stopped = int(child.match.group(1))
    child.expect(f"tchlab \\[cpu · step {stopped}\\]> ")
    assert stopped > 0
    child.sendline(f"%history --export {tmp_path / 'h.csv'}")
    child.expect("wrote (\\d+) steps")
    assert int(child.match.group(1)) == stopped, "the history has every step up to the interrupt"
    assert len((tmp_path / "h.csv").read_text().splitlines()) == stopped + 1
    child.sendline("%step")
    child.expect(f"step\\s+{stopped + 1}\\s+loss")
    settle(child)

    # Ctrl-D asks first: there is training progress that was never saved.
    child.sendeof()
    child.expect("Leave anyway\\? \\[y/N\\]")
    child.sendline("n")
    child.expect(PROMPT)
    child.sendline(f"%save {tmp_path / 'run'}")
    child.expect("saved training checkpoint")
    settle(child)
    child.sendeof()  # saved: no question
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_lines_typed_ahead_all_run_in_order(tmp_path):
    child = spawn(tmp_path)
    # Two lines in one write, as tmux or a fast typist sends them.
    child.send("%echo ahead-1\r%echo ahead-2\r")
    child.expect("\nahead-1\r\n")
    child.expect("\nahead-2\r\n")
    # And lines typed while a command runs: they wait in the terminal, then all run.
    run_lines(child, SETUP)
    child.sendline("%train 300")
    child.expect("loss")
    child.send("%echo during-1\r%echo during-2\r%step\r")
    child.expect("\nduring-1\r\n")
    child.expect("\nduring-2\r\n")
    child.expect("step\\s+301\\s+loss")
    settle(child)
    child.sendeof()
    child.sendline("y")
    child.expect(pexpect.EOF)


def test_a_bracketed_paste_of_several_lines_runs_as_one_cell(tmp_path):
    child = spawn(tmp_path)
    child.send("\x1b[200~%echo pasted-1\r%echo pasted-2\r%echo pasted-3\x1b[201~")
    child.send("\r")
    child.expect("\npasted-1\r\n")
    child.expect("\npasted-3\r\n")
    # One cell: no prompt between its outputs.
    assert "pasted-2" in child.before and "tchlab [" not in child.before, child.before
    child.expect(PROMPT)
    settle(child)
    child.sendeof()
    child.expect(pexpect.EOF)


def run(*args, cwd=None):
    return subprocess.run([str(TCHLAB), *args], capture_output=True, text=True, env=environment(pathlib.Path(cwd or "/tmp")), cwd=cwd, timeout=120)


def test_scripts_stop_at_the_first_error_with_its_line_unless_told_to_keep_going(tmp_path):
    script = tmp_path / "steps.tchlab"
    script.write_text("# comments and blank lines are skipped\n%echo one\n\n%bogus\n%echo four\n")
    result = run("run", str(script))
    assert result.returncode == 1
    assert "one" in result.stdout and "four" not in result.stdout
    assert f"{script}:4: UsageError: unknown command %bogus" in result.stderr
    result = run("run", str(script), "--keep-going")
    assert result.returncode == 1 and "four" in result.stdout
    script.write_text("%echo one\n%%time\n%echo in the cell\n\n%echo after\n")
    result = run("run", str(script))
    assert result.returncode == 0, result.stderr
    assert "in the cell" in result.stdout and "time:" in result.stdout and "after" in result.stdout
    assert run("run", str(tmp_path / "missing.tchlab")).returncode == 2
    assert run("--bogus").returncode == 2


def test_json_prints_each_result_on_its_own_line(tmp_path):
    result = run("-c", "%threads 1\n%echo not json\n%seed 3\n%device cpu", "--json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(l) for l in result.stdout.splitlines()]
    assert lines == [{"threads": 1}, {"device": "cpu", "cuda_available": False, "cuda_devices": 0}]


def test_the_demo_script_trains_generates_and_writes_its_plots(tmp_path):
    shutil.copy(ROOT / "demo" / "reverse.tchlab", tmp_path)
    started = time.time()
    result = run("run", "reverse.tchlab", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert time.time() - started < 120
    assert "401923=329104" in result.stdout, "the trained model reverses a prompt it never saw"
    for name in ["loss.png", "attention.png"]:
        assert (tmp_path / "target" / "demo" / name).read_bytes().startswith(b"\x89PNG")


def test_a_panic_is_an_error_and_the_session_goes_on(tmp_path):
    env = dict(environment(tmp_path), TCHLAB_FAULTS="1")
    child = pexpect.spawn(str(TCHLAB), env=env, encoding="utf-8", timeout=60, dimensions=(40, 160))
    child.expect(PROMPT)
    run_lines(child, SETUP + ["%step 3"])
    child.sendline("%__fault arm step")
    child.expect(PROMPT)
    child.sendline("%step")
    child.expect("InternalError")
    child.expect("session is intact")
    child.expect(r"tchlab \[cpu · step 3\]> ")
    child.sendline("%__fault panic")
    child.expect("InternalError")
    child.sendline("%step")
    child.expect(r"step +4 +loss")
    child.expect(r"tchlab \[cpu · step 4\]> ")
    child.sendline('%generate "1" --max-tokens 1000000')
    time.sleep(1.0)
    child.sendintr()
    child.expect("KeyboardInterrupt")
    child.expect("interrupted while generating")
    child.expect(r"tchlab \[cpu · step 4\]> ")
    settle(child)
    child.sendeof()
    child.expect("Leave anyway")
    child.sendline("y")
    child.expect(pexpect.EOF)


def test_heatmaps_in_a_256_colour_terminal_are_coloured_blocks_labelled_with_tokens(tmp_path):
    """tmux's TERM, no COLORTERM: the palette's half blocks, not braille. One head's map
    is a grid of cells, a row per query token; the grid of every head is a picture in
    half blocks."""
    import re

    env = dict(environment(tmp_path), TERM="screen-256color")
    del env["TCHLAB_IMAGES"]
    env.pop("COLORTERM", None)
    env.pop("NO_COLOR", None)
    child = pexpect.spawn(str(TCHLAB), env=env, encoding="utf-8", timeout=60, dimensions=(50, 160))
    child.expect(PROMPT)
    run_lines(child, SETUP + ["%train 30"])
    child.sendline('%attention "12345=" --layer 0 --head 0')
    child.expect(r"attention.*\(query ↓, key →\)")
    child.expect("tokens: ")
    grid = child.before
    rows = [line for line in grid.split("\r\n") if "\x1b[38;5;" in line and "█" in line and ":" not in line]
    assert len(rows) == 6, grid
    first = re.findall(r"\x1b\[38;5;(\d+)m██", rows[0])
    assert rows[0].lstrip().startswith("1"), "the row is labelled with its token"
    assert len(first) == 6 and first[0] != first[1], f"the first query attends only to itself: one bright cell, then dark ones: {first}"
    assert "\u2800" not in grid, "no braille"
    child.sendline('%attention "12345="')
    child.expect("tokens: ")  # the result, after the figure
    picture = child.before
    colours = set(re.findall(r"\x1b\[38;5;(\d+)m\x1b\[48;5;(\d+)m▀", picture))
    assert len(colours) > 4, "a picture in palette half blocks, of several colours"
    child.sendeof()
    child.expect("Leave anyway")
    child.sendline("y")
    child.expect(pexpect.EOF)


def test_a_chat_reply_streams_into_the_terminal(tmp_path):
    reference = json.loads((pathlib.Path(os.environ["TCHLAB_FIXTURES"]) / "smollm2.json").read_text())
    child = spawn(tmp_path)
    run_lines(child, ["%device cpu", f"%load {reference['file']}"])
    child.sendline('%chat "What is the capital of France?" --max-tokens 32')
    child.expect("The capital of France is Paris.")
    child.expect(r"\[(\d+) tokens in [\d.]+ s")
    assert int(child.match.group(1)) == len(reference["replies"][0])
    child.expect(PROMPT)
    child.sendline('%chat --show "And of Italy?"')
    child.expect("Paris.<\\|im_end\\|>")
    child.expect(PROMPT)
    child.sendeof()
    child.expect(pexpect.EOF)


def test_explore_in_the_terminal_changes_controls_with_arrows_runs_with_enter_and_leaves_with_esc(tmp_path):
    child = spawn(tmp_path)
    run_lines(child, SETUP + ["%seed 0", "%train 30"])
    child.sendline('%explore generate "3141="')
    # The panel on the alternate screen: the controls, the chosen one marked, the picture.
    child.expect(r"\x1b\[\?1049h")
    child.expect("Esc leaves")
    child.expect(r"3141=\S*")
    first = child.after
    # Down to the seed (the fifth control), three steps right: marked as changed, not yet run.
    child.send("\x1b[B" * 4 + "\x1b[C" * 3)
    child.expect(r"seed\s+3 \*")
    child.send("\r")
    child.expect(r"seed\s+3\r\n")
    child.expect("Esc leaves")
    # Temperature to zero (sixteen steps left of 0.8) is greedy: seeds then change nothing.
    child.send("\x1b[A" * 4 + "\x1b[D" * 16 + "\r")
    child.expect(r"temperature\s+0\.00\r\n")
    child.expect("Esc leaves")
    child.expect(r"3141=\S*")
    greedy = child.after
    child.send("\x1b[B" * 4 + "\x1b[C\r")
    child.expect(r"seed\s+4\r\n")
    child.expect("Esc leaves")
    child.expect(r"3141=\S*")
    assert child.after == greedy, (first, greedy, child.after)
    # Past the end of a range a control stays at its end: top-p 1 is its top.
    child.send("\x1b[A" * 2 + "\x1b[C\r")
    child.expect(r"top-p\s+1\.00\r\n")
    # Esc leaves: back to the normal screen, the last picture kept, the session going on.
    child.send("\x1b")
    child.expect(r"\x1b\[\?1049l")
    child.expect(f"3141=")
    child.expect(PROMPT)
    assert child.match.group(1) == "30"
    settle(child)

    # Training tries from the keys: the button runs, the tries show in %runs.
    child.sendline("%explore train")
    child.expect("Esc leaves")
    child.send("\x1b[B" * 5 + "\x1b[D" * 4)  # steps per try down to 10 ...
    child.send("\x1b[B\r")  # ... then `train`
    child.expect("try-1: 10 steps from snapshot")
    child.send("q")
    child.expect(r"\x1b\[\?1049l")
    child.expect(PROMPT)
    child.sendline("%runs")
    child.expect(r"try-1 \*")
    child.expect(PROMPT)
    child.sendeof()
    child.expect("Leave anyway")
    child.sendline("y")
    child.expect(pexpect.EOF)


SWEEP_SETUP = "%device cpu\n%seed 0\n%data synth reverse --length 5\n%model gpt --layers 1 --heads 2 --dim 32\n%set batch=16 eval_every=0\n%train 5\n"


def swept(*lines):
    result = run("-c", SWEEP_SETUP + "\n".join(lines), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1]), result.stderr


@pytest.mark.parametrize("schedule", ["none", "halving", "asha", "pbt --rounds 3"])
def test_trials_in_worker_processes_give_the_in_process_losses_bit_for_bit(tmp_path, schedule):
    sweep = f"%sweep lr=log(1e-4,1e-2) warmup=int(0,3) --method random --trials 4 --steps 6 --schedule {schedule}"
    here, _ = swept(sweep)
    there, _ = swept(f"{sweep} --jobs 2 --study {tmp_path / 'study'}")
    assert [t["values"] for t in there["trials"]] == [t["values"] for t in here["trials"]]
    if schedule == "asha":
        # Asynchronous: which trial goes on depends on which ended first, but every rung a
        # trial trained in both is the same, bit for bit.
        for a, b in zip(here["trials"], there["trials"]):
            n = min(len(a["losses"]), len(b["losses"]))
            assert n >= 6 and a["losses"][:n] == b["losses"][:n], (a, b)
        return
    for a, b in zip(here["trials"], there["trials"]):
        assert a["losses"] == b["losses"] and a["score"] == b["score"] and a["status"] == b["status"] and a["rungs"] == b["rungs"], (a, b)
        assert a.get("lineage") == b.get("lineage"), (a, b)
    if schedule.startswith("pbt"):
        assert any(t.get("lineage") for t in here["trials"]), "a member took over another's state"
    assert there["best"] == here["best"]
    shown = run("-c", f"%sweep --show {tmp_path / 'study'}", "--json")
    assert json.loads(shown.stdout.splitlines()[-1])["trials"] == there["trials"], "the study holds what the workers found"


def test_lora_trials_in_worker_processes_give_the_in_process_losses_bit_for_bit(tmp_path):
    """Each trial its own adapters (rank, alpha) on the same frozen base, in this process
    or in workers that resume it from a checkpoint."""
    sweep = "%lora r=2 targets=c_attn\n%sweep lora_r=[2,4] lora_alpha=[4,8] lr=[3e-3] --steps 6"
    here, _ = swept(sweep)
    there, _ = swept(f"{sweep} --jobs 2 --study {tmp_path / 'study'}")
    settings = {tuple(value for name, value in t["values"] if name.startswith("lora")) for t in here["trials"]}
    assert settings == {("2", "4"), ("2", "8"), ("4", "4"), ("4", "8")}, here
    assert len({json.dumps(t["losses"]) for t in here["trials"]}) == 4, "each trial trains its own adapters"
    for a, b in zip(here["trials"], there["trials"]):
        assert a["values"] == b["values"] and a["losses"] == b["losses"], (a, b)


def test_a_killed_worker_fails_its_trial_and_the_sweep_goes_on(tmp_path):
    script = tmp_path / "sweep.tchlab"
    # Small on purpose: two workers on two cores spin against each other (OpenMP's active
    # wait), and a longer sweep once ran past the 120 s below on a loaded CI machine.
    script.write_text(SWEEP_SETUP + f"%sweep lr=log(1e-4,1e-2) --trials 4 --steps 150 --jobs 2 --study {tmp_path / 'study'}\n")
    sweep = subprocess.Popen([str(TCHLAB), "run", str(script), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment(tmp_path))
    deadline = time.time() + 60
    victim = None
    while victim is None and time.time() < deadline:
        for proc in pathlib.Path("/proc").iterdir():
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
                status = (proc / "status").read_text()
            except OSError:
                continue
            if b"__tchlab-sweep-worker" in cmdline and f"PPid:\t{sweep.pid}\n" in status:
                victim = int(proc.name)
                break
        time.sleep(0.05)
    assert victim, "a worker process ran"
    os.kill(victim, 9)
    out, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 0, err
    result = json.loads(out.splitlines()[-1])
    statuses = [t["status"] for t in result["trials"]]
    assert statuses.count("failed") == 1 and statuses.count("done") == 3, statuses
    assert "worker process failed" in err and "signal: 9" in err
    shown = run("-c", f"%sweep --show {tmp_path / 'study'}", "--json")
    assert [t["status"] for t in json.loads(shown.stdout.splitlines()[-1])["trials"]] == statuses
