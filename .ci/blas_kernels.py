"""Run the CPU-sensitive tests once per OpenBLAS kernel this machine can run.

numpy's bundled OpenBLAS is built with DYNAMIC_ARCH: at load time it picks kernels for the CPU, and
``OPENBLAS_CORETYPE`` forces another family. Kernels differ in the last bit of some results (an AVX-512
``ddot`` fuses its last multiply-add, older ones round the product first), so a number that is exact under
one kernel can be off by an ulp under another. This script probes every candidate family in a fresh process,
keeps one name per kernel OpenBLAS really loaded, and runs pytest under each (``-m cpu_sensitive``).

A family whose level-2/3 kernels the CPU cannot execute dies with SIGILL in the full probe. Its ``ddot`` may
still run (OpenBLAS's SkylakeX ``ddot`` of two elements uses only FMA3 instructions, which AVX2 CPUs have):
then the norm tests (``tests/test_fast_mpe.py -k norm``), which need nothing but ``ddot``, run under it, so the
port's fused-kernel path is checked on every CI machine, not only on AVX-512 ones. Any other probe failure is
an error, and so is a default kernel that does not run.

usage: python .ci/blas_kernels.py [--list] [--skip-default] [PYTEST ARGS...]
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

# Oldest first; names as OpenBLAS's force_coretype spells them. Several map to one kernel set on a given CPU.
CANDIDATES = ("Prescott", "Core2", "Nehalem", "Sandybridge", "Haswell", "Zen", "SkylakeX", "CooperLake",
              "SapphireRapids")
NORM_TESTS = ["-q", "tests/test_fast_mpe.py", "-k", "norm"]

# Prints the kernel family OpenBLAS loaded, after exercising the kernels the tests reach: ddot of 2-vectors
# (np.linalg.norm and a stacked matmul) and, unless "ddot" is the first argument, long ddot, dgemv and dgemm.
PROBE = r"""
import ctypes, glob, os, sys
import numpy as np
rng = np.random.default_rng(0)
a = rng.standard_normal((96, 96))
_ = (np.linalg.norm(a[0, :2]), np.matmul(a[:, None, :2], a[:, :2, None]))  # ddot of 2-vectors, as the port's
if sys.argv[1:] != ["ddot"]:
    _ = (np.linalg.norm(a[0]), a @ a, a @ a[0])
name = "?"
for lib in glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*openblas*")):
    dll = ctypes.CDLL(lib)
    for sym in ("scipy_openblas_get_corename64_", "openblas_get_corename64_", "openblas_get_corename"):
        fn = getattr(dll, sym, None)
        if fn is not None:
            fn.restype = ctypes.c_char_p
            name = fn().decode()
            break
print(name)
"""


def _env(forced: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    if forced:
        env["OPENBLAS_CORETYPE"] = forced
    return env


def _probe(forced: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PROBE, *args], env=_env(forced), capture_output=True, text=True)


def runnable_kernels() -> list[tuple[str, str, bool]]:
    """[(OPENBLAS_CORETYPE value, kernel OpenBLAS loaded, full)], one entry per loaded kernel ("" = default);
    ``full`` False: only ddot runs on this CPU."""
    seen: dict[str, tuple[str, bool]] = {}
    for forced in ("",) + CANDIDATES:
        probe, full = _probe(forced), True
        if probe.returncode == -signal.SIGILL and forced:
            probe, full = _probe(forced, "ddot"), False
            if probe.returncode == -signal.SIGILL:
                print(f"blas-kernels: {forced}: not runnable here (illegal instruction)", flush=True)
                continue
        if probe.returncode != 0:
            tail = (probe.stderr.strip().splitlines() or ["?"])[-1]
            raise SystemExit(f"blas-kernels: the probe failed under {forced or 'the default kernel'} "
                             f"(exit {probe.returncode}): {tail}")
        loaded = probe.stdout.strip()
        if loaded == "?":  # no way to ask this OpenBLAS: keep every runnable family
            loaded = f"unknown ({forced or 'default'})"
        if loaded not in seen or (full and not seen[loaded][1]):
            seen[loaded] = (forced, full)
    return [(forced, loaded, full) for loaded, (forced, full) in seen.items()]


def main(argv: list[str]) -> int:
    skip_default = "--skip-default" in argv
    argv = [a for a in argv if a != "--skip-default"]
    kernels = runnable_kernels()
    print("blas-kernels: " + ", ".join(f"{f or 'default'} -> {k}" + ("" if full else " (ddot only)")
                                       for f, k, full in kernels), flush=True)
    if argv[:1] == ["--list"]:
        return 0
    args = argv or ["-q", "-m", "cpu_sensitive"]
    failed, ran = [], 0
    for forced, loaded, full in kernels:
        if skip_default and not forced:
            continue  # `make test` has just run everything under the default kernel
        run_args = args if full else NORM_TESTS
        print(f"blas-kernels: OPENBLAS_CORETYPE={forced or '(unset)'} (kernel {loaded}): pytest {' '.join(run_args)}",
              flush=True)
        ran += 1
        if subprocess.run([sys.executable, "-m", "pytest", *run_args], env=_env(forced)).returncode != 0:
            failed.append(loaded)
    print(f"blas-kernels: {ran - len(failed)}/{ran} kernels passed"
          + (f"; failed under {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed or (ran == 0 and not skip_default) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
