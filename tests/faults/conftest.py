"""The kernel most fault tests share, one per test module, trained a few steps."""

import pytest

from cells import execute
from hostile import SETUP, TIMEOUT, start


@pytest.fixture(scope="module")
def lab():
    km, kc = start()
    reply, _ = execute(kc, SETUP, timeout=TIMEOUT)
    assert reply["content"]["status"] == "ok", reply["content"]
    yield km, kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)
