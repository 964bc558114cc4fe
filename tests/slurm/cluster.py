"""A one-node Slurm cluster on this machine, for the tests: munged, slurmctld and
slurmd from Debian's packages (`make test` installs them as root), run as root in the
foreground from a private directory with their own key, socket, configuration and
free ports, and stopped by their pids. The client commands find it through
SLURM_CONF, which `env` carries."""

import os
import pathlib
import shutil
import socket
import string
import subprocess
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
DAEMONS = ["munged", "slurmctld", "slurmd"]


def missing():
    """Why a cluster cannot start here, or None."""
    absent = [d for d in DAEMONS + ["sbatch", "squeue", "scancel", "scontrol"] if not shutil.which(d)]
    if absent:
        return f"Slurm is not installed ({', '.join(absent)} missing; `make test` installs slurm-wlm and munge as root)"
    if os.geteuid() != 0:
        return "the test cluster's daemons run as root"
    return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self):
        # Under /tmp, every directory on the socket's path searchable by all: munged checks.
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="tchlab-slurm-", dir="/tmp"))
        os.chmod(self.dir, 0o755)
        for sub, mode in [("key", 0o700), ("run", 0o755), ("state", 0o755), ("spool", 0o755)]:
            (self.dir / sub).mkdir(mode=mode)
        key = self.dir / "key" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        memory_mb = int(open("/proc/meminfo").read().split("MemAvailable:")[1].split()[0]) // 1024 // 2
        conf = string.Template((HERE / "slurm.conf.in").read_text()).substitute(
            DIR=self.dir, CPUS=os.cpu_count(), MEM_MB=memory_mb, CTLD_PORT=free_port(), SLURMD_PORT=free_port()
        )
        self.conf = self.dir / "slurm.conf"
        self.conf.write_text(conf)
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self.processes = []
        d = self.dir
        self.start(["munged", "-F", f"--socket={d}/run/munge.socket", f"--key-file={key}", f"--log-file={d}/munged.log",
                    f"--pid-file={d}/munged.pid", f"--seed-file={d}/munged.seed"], until=lambda: (d / "run" / "munge.socket").exists())
        self.start(["slurmctld", "-D", "-f", str(self.conf)], until=lambda: self.run("sinfo").returncode == 0)
        self.start(["slurmd", "-D", "-N", "localhost", "-f", str(self.conf)], until=lambda: "idle" in self.run("sinfo", "--noheader").stdout)

    def start(self, command, until, timeout=60):
        log = open(self.dir / f"{command[0]}.out", "w")
        self.processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env))
        deadline = time.time() + timeout
        while not until():
            if self.processes[-1].poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"{command[0]} did not start: {(self.dir / f'{command[0]}.out').read_text()[-2000:]}")
            time.sleep(0.2)

    def run(self, *command):
        return subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=30)

    def queue(self):
        """Array tasks pending or running: `JOB_INDEX STATE` lines."""
        return self.run("squeue", "--noheader", "--array", "--format=%i %T").stdout.split("\n")

    def stop(self):
        for p in reversed(self.processes):
            p.terminate()
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.processes = []
        shutil.rmtree(self.dir, ignore_errors=True)
