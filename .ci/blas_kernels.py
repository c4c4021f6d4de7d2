"""Run the CPU-sensitive tests once per OpenBLAS kernel this machine can run.

numpy's bundled OpenBLAS is built with DYNAMIC_ARCH: at load time it picks kernels for the CPU, and
``OPENBLAS_CORETYPE`` forces another family. Kernels differ in the last bit of some results (an AVX-512
``ddot`` fuses its last multiply-add, older ones round the product first), so a number that is exact under
one kernel can be off by an ulp under another. This script probes every candidate family in a fresh process
(a kernel the CPU cannot execute dies with SIGILL and is skipped), keeps one name per kernel OpenBLAS really
loaded, and runs pytest under each.

usage: python .ci/blas_kernels.py [--list] [PYTEST ARGS...]   (default pytest args: -q -m cpu_sensitive)
"""

from __future__ import annotations

import os
import subprocess
import sys

# Oldest first; names as OpenBLAS's force_coretype spells them. Several map to one kernel set on a given CPU.
CANDIDATES = ("Prescott", "Core2", "Nehalem", "Sandybridge", "Haswell", "Zen", "SkylakeX", "CooperLake",
              "SapphireRapids")

# Exercises the level-1/2/3 kernels the tests reach (ddot via norm and stacked matmul, dgemv, dgemm) and
# prints the kernel family OpenBLAS loaded.
PROBE = r"""
import ctypes, glob, os
import numpy as np
rng = np.random.default_rng(0)
a = rng.standard_normal((96, 96))
v = a[0].copy()
_ = (a @ a, a @ v, np.linalg.norm(v), np.matmul(a[:, None, :2], a[:, :2, None]))
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


def runnable_kernels() -> list[tuple[str, str]]:
    """[(OPENBLAS_CORETYPE value, kernel OpenBLAS loaded)], one entry per loaded kernel; "" is the default."""
    seen: dict[str, str] = {}
    for forced in ("",) + CANDIDATES:
        env = dict(os.environ, OPENBLAS_CORETYPE=forced)
        if not forced:
            env.pop("OPENBLAS_CORETYPE")
        probe = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True)
        if probe.returncode != 0:
            print(f"blas-kernels: {forced or 'default'}: not runnable here (exit {probe.returncode})", flush=True)
            continue
        loaded = probe.stdout.strip()
        if loaded == "?":  # no way to ask this OpenBLAS: keep every runnable family
            loaded = f"unknown ({forced or 'default'})"
        seen.setdefault(loaded, forced)
    return [(forced, loaded) for loaded, forced in seen.items()]


def main(argv: list[str]) -> int:
    kernels = runnable_kernels()
    print("blas-kernels: " + ", ".join(f"{f or 'default'} -> {k}" for f, k in kernels), flush=True)
    if argv[:1] == ["--list"]:
        return 0
    args = argv or ["-q", "-m", "cpu_sensitive"]
    failed = []
    for forced, loaded in kernels:
        env = dict(os.environ)
        env.pop("OPENBLAS_CORETYPE", None)
        if forced:
            env["OPENBLAS_CORETYPE"] = forced
        print(f"blas-kernels: OPENBLAS_CORETYPE={forced or '(unset)'} (kernel {loaded}): pytest {' '.join(args)}",
              flush=True)
        if subprocess.run([sys.executable, "-m", "pytest", *args], env=env).returncode != 0:
            failed.append(loaded)
    print(f"blas-kernels: {len(kernels) - len(failed)}/{len(kernels)} kernels passed"
          + (f"; failed under {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
