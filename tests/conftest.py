"""Installs the freshly built kernel's spec into a private prefix and points Jupyter
at it, so the tests run the kernel from this checkout (target/release); `kernel` is a
fresh one for a test."""

import os
import pathlib
import subprocess
import sys
import tempfile

import pytest
from jupyter_client.manager import start_new_kernel

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The tests import their shared helpers (cells.py) from here.
sys.path.insert(0, str(ROOT / "tests"))
KERNEL = ROOT / "target" / "release" / "tchlab-kernel"

if not KERNEL.exists():
    raise RuntimeError(f"{KERNEL} is missing: run the tests through `make test` (it builds the binaries first)")

_prefix = tempfile.mkdtemp(prefix="tchlab-kernelspec-")
subprocess.run([str(KERNEL), "install", "--prefix", _prefix], check=True, capture_output=True)
os.environ["JUPYTER_PATH"] = os.path.join(_prefix, "share", "jupyter")
os.environ.setdefault("JUPYTER_PLATFORM_DIRS", "1")


@pytest.fixture
def kernel():
    """A fresh tchlab kernel and its client."""
    km, kc = start_new_kernel(kernel_name="tchlab", startup_timeout=60)
    yield km, kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)
