"""`make test-isa`: the tests marked `kernels` under every CPU kernel set this CPU can run.

PyTorch picks its CPU kernels (ATen) and oneDNN's instruction set from the CPU it runs on:
AVX-512 here, AVX2 there, plain x86-64 on an old or emulated one. A model trained for a few
steps, or a bf16 result, differs in the last bits between them, and a test on the knife edge
of what a tiny model learns passes on one and fails on another. ATEN_CPU_CAPABILITY and
ONEDNN_MAX_CPU_ISA make a CPU use a smaller set, so a developer sees what another CPU would.

    python scripts/kernel_sets.py                      # native, avx2, default
    python scripts/kernel_sets.py --sets avx2,default -- -m "kernels and not slow"

Arguments after `--` go to pytest (default: -m kernels). Every run ends with the margins of
its checks (tests/conftest.py), so the three tables side by side show each test's headroom.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

# the environment that caps a CPU at each kernel set (native: none); oneDNN's names differ
KERNEL_SETS = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "default": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}
CAPABILITY = "import torch; print(torch.backends.cpu.get_cpu_capability())"
NO_TESTS_COLLECTED = 5  # pytest's exit code


def environment(name: str) -> dict[str, str]:
    """This process's environment capped at kernel set NAME (any cap set outside removed)."""
    plain = {k: v for k, v in os.environ.items() if k not in KERNEL_SETS["avx2"]}
    return {**plain, **KERNEL_SETS[name]}


def capability(name: str) -> str:
    """The kernel set torch really uses under NAME's cap (a CPU without AVX2 ignores `avx2`)."""
    done = subprocess.run(
        [sys.executable, "-c", CAPABILITY], env=environment(name), capture_output=True,
        text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip().lower()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=",".join(KERNEL_SETS), help="native,avx2,default")
    parser.add_argument("pytest_args", nargs="*", help="after --: pytest's arguments")
    args = parser.parse_args()
    pytest_args = args.pytest_args
    if "-m" not in pytest_args:
        pytest_args = ["-m", "kernels", *pytest_args]
    names = args.sets.split(",")
    unknown = [name for name in names if name not in KERNEL_SETS]
    if unknown:
        print(f"--sets: unknown kernel set {unknown[0]!r}; known: {', '.join(KERNEL_SETS)}")
        return 2
    native = capability("native")
    failed = []
    for name in names:
        got = capability(name)
        if name != "native" and got == native:  # make test's own run covers it
            print(f"== {name}: this CPU's own kernel set ({native}): the native run's")
            continue
        if name != "native" and got != KERNEL_SETS[name]["ATEN_CPU_CAPABILITY"]:
            print(f"== {name}: this CPU cannot run it (torch uses {got}); skipped")
            continue
        caps = " ".join(f"{k}={v}" for k, v in KERNEL_SETS[name].items()) or "no cap"
        print(f"== CPU kernels {got} ({caps})", flush=True)
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *pytest_args]
        code = subprocess.run(command, env=environment(name)).returncode
        if code not in (0, NO_TESTS_COLLECTED):  # a path given that holds no `kernels` test
            failed.append(name)
    if failed:
        print(f"failed under the kernel sets: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
