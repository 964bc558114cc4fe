"""`%sweep --on slurm` on a real one-node Slurm cluster (cluster.py): trials as job
arrays, their losses equal bit for bit to the same trials in-process, a cancelled job
failing only its trial, `--attach` after the front end died, an interrupt cancelling
the jobs. Without Slurm (not root, packages missing) these report themselves skipped."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from jupyter_client.manager import start_new_kernel

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import cluster as slurm_cluster  # noqa: E402
from cells import RESULT, execute  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
TCHLAB = ROOT / "target" / "release" / "tchlab"
SETUP = "%device cpu\n%seed 0\n%data synth reverse --length 5\n%model gpt --layers 1 --heads 2 --dim 32\n%set batch=16 eval_every=0\n%train 5\n"
RANDOM = "%sweep lr=log(1e-4,1e-2) warmup=int(0,3) --method random --trials 8 --steps 6"
PBT = "%sweep lr=log(1e-4,1e-2) warmup=int(0,3) --schedule pbt --trials 4 --rounds 3 --steps 4"
LORA = "%lora r=2 targets=c_attn\n%sweep lora_r=[2,4] lora_alpha=[4,8] lr=[3e-3] --steps 6"


@pytest.fixture(scope="module")
def cluster():
    why = slurm_cluster.missing()
    if why:
        pytest.skip(why)
    c = slurm_cluster.Cluster()
    yield c
    c.stop()


def tchlab(c, home, *args, timeout=300):
    env = dict(c.env, HOME=str(home), TCHLAB_IMAGES="none")
    return subprocess.run([str(TCHLAB), *args], capture_output=True, text=True, env=env, timeout=timeout)


def swept(c, home, *lines):
    result = tchlab(c, home, "-c", SETUP + "\n".join(lines), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1]), result.stderr


def same_trials(a, b):
    assert [t["values"] for t in a["trials"]] == [t["values"] for t in b["trials"]]
    for x, y in zip(a["trials"], b["trials"]):
        for key in ["losses", "score", "status", "rungs"]:
            assert x[key] == y[key], (key, x, y)
        assert x.get("lineage") == y.get("lineage"), (x, y)
    assert a["best"] == b["best"]


@pytest.mark.parametrize("sweep", [RANDOM, PBT, LORA], ids=["random-8", "pbt-4x3", "lora-grid-4"])
def test_a_slurm_sweep_runs_job_arrays_with_the_in_process_losses_bit_for_bit(cluster, tmp_path, sweep):
    here, _ = swept(cluster, tmp_path, sweep)
    study = tmp_path / "study"
    there, _ = swept(cluster, tmp_path, f"{sweep} --on slurm --study {study} --cpus 1")
    same_trials(here, there)
    arrays = [json.loads(line) for line in (study / "arrays.jsonl").read_text().splitlines()]
    if sweep == RANDOM:
        assert len(arrays) == 1 and len(arrays[0]["tasks"]) == 8, "eight trials, one job array"
        script = (study / "array-0.sh").read_text()
        assert "#SBATCH --array=0-7" in script and "#SBATCH --cpus-per-task=1" in script and "__tchlab-sweep-worker" in script
    elif sweep == PBT:
        assert [len(a["tasks"]) for a in arrays] == [4, 4, 4], "one array per round"
        assert any(t.get("lineage") for t in there["trials"]), "someone exploited"
    else:
        assert len(arrays) == 1 and len(arrays[0]["tasks"]) == 4, "each trial its own adapters on the same base, one job array"
        assert len({json.dumps(t["losses"]) for t in there["trials"]}) == 4
    assert all((study / "tasks" / f"slurm-{a['job']}_0.out").exists() for a in arrays), "Slurm ran the tasks"
    shown = tchlab(cluster, tmp_path, "-c", f"%sweep --show {study}", "--json")
    assert json.loads(shown.stdout.splitlines()[-1])["trials"] == there["trials"], "the study holds what the jobs found"
    states = list((study / "states").iterdir())
    assert len(states) == 1, f"only the best trial's last state is kept: {states}"


def wait_for(what, condition, timeout=120):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.1)


def test_a_cancelled_job_fails_only_its_trial(cluster, tmp_path):
    study = tmp_path / "study"
    script = tmp_path / "sweep.tchlab"
    script.write_text(SETUP + f"%sweep lr=log(1e-4,1e-2) --trials 6 --steps 300 --on slurm --study {study}\n")
    env = dict(cluster.env, HOME=str(tmp_path), TCHLAB_IMAGES="none")
    sweep = subprocess.Popen([str(TCHLAB), "run", str(script), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    wait_for("a running array task", lambda: any(line.endswith(" RUNNING") for line in cluster.queue()))
    victim = next(line.split()[0] for line in cluster.queue() if line.endswith(" RUNNING"))
    assert cluster.run("scancel", victim).returncode == 0
    out, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, err
    result = json.loads(out.splitlines()[-1])
    statuses = [t["status"] for t in result["trials"]]
    assert statuses.count("failed") == 1 and statuses.count("done") == 5, statuses
    assert f"its Slurm job {victim} ended CANCELLED" in err, err
    shown = tchlab(cluster, tmp_path, "-c", f"%sweep --show {study}", "--json")
    assert [t["status"] for t in json.loads(shown.stdout.splitlines()[-1])["trials"]] == statuses


def test_attach_follows_the_jobs_after_the_front_end_died_and_adopts_the_best(cluster, tmp_path):
    sweep = "%sweep lr=log(1e-4,1e-2) warmup=int(0,3) --method random --trials 8 --steps 60"
    here, _ = swept(cluster, tmp_path, sweep)
    study = tmp_path / "study"
    script = tmp_path / "sweep.tchlab"
    script.write_text(SETUP + f"{sweep} --on slurm --study {study}\n")
    env = dict(cluster.env, HOME=str(tmp_path), TCHLAB_IMAGES="none")
    front = subprocess.Popen([str(TCHLAB), "run", str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_for("the first finished trial", lambda: (study / "study.jsonl").exists() and len((study / "study.jsonl").read_text().splitlines()) >= 2)
    front.kill()
    front.wait()
    assert any(line.strip() for line in cluster.queue()), "the jobs go on without the front end"
    # A new session with no model at all follows them and takes the best trial's state.
    attached = tchlab(cluster, tmp_path, "-c", f"%sweep --attach {study} --adopt\n%step", "--json")
    assert attached.returncode == 0, attached.stderr
    results = [json.loads(line) for line in attached.stdout.splitlines()]
    same_trials(here, results[0])
    best = next(t for t in results[0]["trials"] if t["id"] == results[0]["best"])
    assert results[1]["step"] == 5 + len(best["losses"]) + 1, "the session continues from the best trial's last step"
    assert cluster.queue() == [""], "nothing left running"
    again = tchlab(cluster, tmp_path, "-c", f"%sweep --attach {study}", "--json")
    assert json.loads(again.stdout.splitlines()[-1])["trials"] == results[0]["trials"], "a finished sweep attaches as it ended"


def test_an_interrupt_cancels_the_jobs_and_keeps_what_finished(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    km, kc = start_new_kernel(kernel_name="tchlab", startup_timeout=60)
    try:
        for line in SETUP.splitlines():
            assert execute(kc, line)[0]["content"]["status"] == "ok", line
        study = tmp_path / "study"
        msg_id = kc.execute(f"%sweep lr=log(1e-4,1e-2) --trials 6 --steps 2000 --on slurm --study {study}")
        wait_for("a running array task", lambda: any(line.endswith(" RUNNING") for line in cluster.queue()))
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=60)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["ename"] == "KeyboardInterrupt", reply["content"]
        wait_for("the jobs to be cancelled", lambda: cluster.queue() == [""], timeout=30)
        assert execute(kc, "%echo alive")[0]["content"]["status"] == "ok"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
