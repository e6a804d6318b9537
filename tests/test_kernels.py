"""`make test-isa` (scripts/kernel_sets.py) really changes the kernels torch runs, and refuses
what it does not know: otherwise it would test the native set three times and say nothing."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO, script_module

SCRIPT = REPO / "scripts" / "kernel_sets.py"
kernel_sets = script_module("kernel_sets")


def test_each_kernel_set_it_asks_for_is_the_one_torch_runs():
    native = kernel_sets.capability("native")
    assert native in ("default", "avx2", "avx512", "avx512_vnni", "avx512_bf16")
    assert kernel_sets.capability("default") == "default"
    if native != "default":  # a CPU without AVX2 cannot be asked for it
        assert kernel_sets.capability("avx2") == "avx2"


def test_an_unknown_kernel_set_is_one_line_and_exit_2():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--sets", "native,avx3"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stdout.strip() == "--sets: unknown kernel set 'avx3'; known: native, avx2, default"
