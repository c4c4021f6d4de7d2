"""CPU time of reading runs: doctor, mechanism and calibrate over the same runs, for one or two checkouts.

    python -m marl_stability.bench.reading RUN_DIR_OR_FOLDER... [--tree NEW] [--old-tree OLD] [--rounds 2]

Each tool runs in a fresh interpreter with the checkout first on the import path (``python -m marl_stability``),
as a user runs it: ``doctor`` once per run (the only way before 0.2.0) and, where the checkout supports it, once
over all runs; then ``mechanism`` and ``calibrate`` over the folders. The CPU time (user + system) of each
child is measured with ``resource.getrusage(RUSAGE_CHILDREN)``. Round 1 is the first read; later rounds find
what the first one cached (``.scalars_cache.npz`` next to runs that have no ``scalars.npz``). ``--clear`` deletes
those caches first, so round 1 is a cold read. With ``--old-tree`` the old checkout is measured first on the
same runs, and the ratios old/new are printed (one machine, one invocation: the numbers compare).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from marl_stability.errors import ArgumentParser, UserError

CACHE = ".scalars_cache.npz"


def cpu_of(cmd: list[str], tree: Path, cwd: Path) -> float:
    """User + system CPU seconds of one child process (its output discarded; a failure is an error)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, cwd=cwd, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise UserError(f"{' '.join(cmd[2:5])} failed in {tree}: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run_dirs(paths: list[Path]) -> list[Path]:
    """The finished runs (with a summary.json) below ``paths``, found by the run reader's discovery."""
    from marl_stability.runs.record import find_run_dirs

    found = [d for d in find_run_dirs(paths) if (d / "summary.json").is_file()]
    if not found:
        raise UserError("no finished runs (config.yaml with summary.json) under " + ", ".join(map(str, paths)))
    return found


def measure(tree: Path, paths: list[Path], runs: list[Path], many_doctor: bool, scratch: Path) -> dict[str, float]:
    """CPU seconds per tool for one pass over the runs."""
    py = [sys.executable, "-m", "marl_stability"]
    out = {"doctor (one call per run)": sum(cpu_of(py + ["doctor", str(r)], tree, scratch) for r in runs)}
    if many_doctor:
        out["doctor (one call)"] = cpu_of(py + ["doctor", *map(str, paths)], tree, scratch)
    out["mechanism"] = cpu_of(py + ["mechanism", *map(str, paths)], tree, scratch)
    out["calibrate"] = cpu_of(py + ["calibrate", *map(str, paths), "--out", str(scratch / "cal"), "--quiet"],
                              tree, scratch)
    return out


def supports_many(tree: Path) -> bool:
    """Whether this checkout's doctor takes several runs (0.2.0 on)."""
    main = tree / "marl_stability" / "cli" / "main.py"
    return main.is_file() and "run_dirs: list[Path]" in main.read_text(encoding="utf-8")


def report(name: str, rounds: list[dict[str, float]]) -> None:
    for i, r in enumerate(rounds, 1):
        per_run = r["doctor (one call per run)"] + r["mechanism"] + r["calibrate"]
        parts = ", ".join(f"{k} {v:.1f}" for k, v in r.items())
        line = f"{name} round {i}: doctor per run + mechanism + calibrate = {per_run:.1f} s CPU"
        if "doctor (one call)" in r:
            line += f"; with one doctor call {r['doctor (one call)'] + r['mechanism'] + r['calibrate']:.1f} s"
        print(f"{line}  [{parts}]", flush=True)


def total(r: dict[str, float], one_call: bool) -> float:
    doctor = r["doctor (one call)"] if one_call and "doctor (one call)" in r else r["doctor (one call per run)"]
    return doctor + r["mechanism"] + r["calibrate"]


def main(argv: list[str] | None = None) -> None:
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", type=Path, help="run directories or folders holding runs")
    ap.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[2], help="the checkout to measure")
    ap.add_argument("--old-tree", type=Path, default=None, help="an older checkout, measured first on the same runs")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clear", action="store_true", help=f"delete {CACHE} files under the paths first")
    args = ap.parse_args(argv)
    paths = [p.resolve() for p in args.paths]
    runs = run_dirs(paths)
    print(f"{len(runs)} runs", flush=True)
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        trees = ([("old", args.old_tree.resolve())] if args.old_tree else []) + [("new", args.tree.resolve())]
        for name, tree in trees:
            if args.clear:
                for r in runs:
                    (r / CACHE).unlink(missing_ok=True)
            results[name] = [measure(tree, paths, runs, supports_many(tree), Path(tmp)) for _ in range(args.rounds)]
            report(name, results[name])
    if "old" in results:
        old = total(results["old"][0], one_call=False)
        for i, r in enumerate(results["new"], 1):
            print(f"old round 1 / new round {i}: {old / total(r, False):.1f}x (doctor per run), "
                  f"{old / total(r, True):.1f}x (one doctor call)")


if __name__ == "__main__":
    main()
