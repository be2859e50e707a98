"""Instruction counts of one benchmark child process, under valgrind's callgrind.

Instruction counts repeat whatever else the machine runs, where wall-clock and even CPU
times on a shared machine do not. Each benchmark that counts instructions re-runs itself
as a child (``script *args``) with one BLAS/OpenMP thread and reads the total callgrind
prints. Subtract a child that only sets up (``base``) to get the work alone.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

__all__ = ["instructions", "require_valgrind", "settle"]


def settle() -> None:
    """Call in a child after its warm-up, before the counted work: the objects of the
    imports and the setup are set aside from the cyclic collector, so that a full collection
    over them (tens of millions of instructions) cannot land in one variant's counted calls
    and not in another's."""
    import gc

    gc.collect()
    gc.freeze()


def require_valgrind() -> None:
    """Stop with the install hint when valgrind is missing."""
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install -y valgrind)")


def instructions(script: str, args: list[str], label: str, folder: str) -> int:
    """Instructions executed by ``python script *args`` (one thread), the callgrind output
    file kept in ``folder`` under ``label``."""
    out = os.path.join(folder, f"callgrind.{label}")
    # one hash seed: dict and set layouts (and so the interpreter's work) repeat across runs
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable]
    run = subprocess.run(
        [*command, script, *args], env=env, capture_output=True, text=True, check=False
    )
    if run.returncode != 0:
        raise SystemExit(f"callgrind run '{label}' failed:\n{run.stderr[-2000:]}")
    match = re.search(r"Collected\s*:\s*(\d+)", run.stderr)
    if match is None:
        raise SystemExit(f"no instruction count in callgrind's output:\n{run.stderr[-2000:]}")
    return int(match.group(1))
