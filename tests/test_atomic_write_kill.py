"""A writer SIGKILLed in the middle of an atomic write leaves the previous file intact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

WRITER = r"""
import sys, time
from pellucid._io import atomic_write

target, started = sys.argv[1], sys.argv[2]

def slow(tmp):
    with open(tmp, "wb") as handle:
        handle.write(b"new, half written " * 1000)
        handle.flush()
        open(started, "w").close()  # tell the test we are in the middle of the write
        time.sleep(60)
        handle.write(b"never reached")

atomic_write(target, slow)
"""


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_mid_write_keeps_the_previous_file(tmp_path):
    target, started = tmp_path / "results.json", tmp_path / "started"
    target.write_bytes(b'{"previous": true}\n')
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(started)])
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert proc.poll() is None, "the writer exited before writing"
            assert time.monotonic() < deadline, "the writer never started"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert target.read_bytes() == b'{"previous": true}\n'
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".results.json.")]
    assert len(leftovers) == 1 and leftovers[0].endswith(".tmp")  # the temp file, same folder
