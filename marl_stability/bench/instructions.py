"""Instructions per env step of the fast mpe2 port, counted by valgrind's callgrind (not wall clock).

    python -m marl_stability.bench.instructions [--env simple_push_v3[,simple_v3,...]] [--batch 256] [--steps 50]
                                         [--warmup 10] [--discrete | --both] [--seed 0] [--tree DIR]
                                         [--top N] [--json]

On a shared machine a wall-clock A/B of two versions of the step moves by +-15 %; the number of instructions
executed repeats to about 1 % (0.5 % at B = 256), so this is the measure for per-step cost cuts. For each
task (and action type) a child interpreter under ``valgrind --tool=callgrind`` builds
``FastMPEVectorEnv(env, {"max_cycles": 25, "continuous_actions": ...}, batch, seed)``, resets it, runs
``--warmup`` steps (lazy imports, first-call caches), pre-generates ``--steps`` uniform random action batches
from ``--seed`` and steps through them in one ``functools.reduce`` call. Callgrind counts only inside
CPython's C function ``functools_reduce`` (``--collect-atstart=no --toggle-collect=functools_reduce``) and
writes one profile per call (``--dump-after=functools_reduce``), so interpreter start-up, imports, env
construction and warm-up are not counted and one child measures every task. reduce's own call of the step
costs a few hundred instructions (< 0.1 % of a step at B = 256). The marker needs an interpreter with a
symbol table (pyenv and source builds have one; a stripped distribution python yields no profile, which is
reported). Autoresets are included as in ``bench --env-only`` (max_cycles 25: the 50 steps after 10 warm-up
steps hold two).

Prints instructions per step per task; ``--json`` prints the same as one JSON object. ``--tree DIR`` measures
another checkout (its ``envs`` package first on the import path), e.g. ``--tree /path/to/main`` for the
before of an A/B. ``--top N`` also prints callgrind_annotate's N most expensive C functions (exclusive
instructions) per task. Run it under ``nice`` on a shared machine; a task takes ~20-40 s (start-up is shared).
Without valgrind on the PATH it fails with one ``error:`` line (exit 2): ``apt-get install valgrind``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from marl_stability.errors import ArgumentParser, UserError

_MARKER = "functools_reduce"  # CPython's C function behind functools.reduce: delimits the measured region
_ROOT = Path(__file__).resolve().parents[2]
# The child loads this file by path (not as marl_stability.bench.instructions), so --tree may name a checkout without it.
_CHILD = ("import importlib.util, json, sys; spec = importlib.util.spec_from_file_location('bench_instr', sys.argv[1]); "
          "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod); "
          "mod._measure_in_child(json.loads(sys.argv[2]))")


def _measure_in_child(spec: dict[str, Any]) -> None:
    """Child side (runs under callgrind): one ``functools.reduce`` over the measured steps, i.e. one profile
    dump, per configuration."""
    import functools

    import numpy as np

    if spec["top_level_envs"]:  # a checkout from before 0.2.0, whose envs package was top-level
        from envs.fast_mpe import FastMPEVectorEnv  # type: ignore[import-not-found]  # noqa: I001
    else:
        from marl_stability.envs.fast_mpe import FastMPEVectorEnv

    for env_id, discrete in spec["configs"]:
        venv = FastMPEVectorEnv(env_id, {"max_cycles": 25, "continuous_actions": not discrete}, spec["batch"],
                                spec["seed"])
        venv.reset()
        lay = venv.layout
        rng = np.random.default_rng(spec["seed"])
        warm = rng.random((spec["warmup"], venv.num_envs, lay.num_agents, lay.max_act_dim), dtype=np.float32)
        actions = list(rng.random((spec["steps"], venv.num_envs, lay.num_agents, lay.max_act_dim), dtype=np.float32))
        for a in warm:
            venv.step(a)
        functools.reduce(lambda _, a, step=venv.step: step(a), actions, None)  # counted: inside functools_reduce


def _valgrind() -> str:
    path = shutil.which("valgrind")
    if path is None:
        raise UserError("valgrind is not installed (apt-get install valgrind); bench_instr counts instructions with it")
    return path


def _dump_total(path: Path) -> int:
    """Instructions (event Ir) of one callgrind profile: its ``summary:`` (or ``totals:``) line."""
    for line in path.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"{path}: no summary line in the callgrind profile")


def _top_functions(path: Path, n: int) -> str:
    """callgrind_annotate's ``n`` most expensive functions (exclusive instructions) of one profile."""
    annotate = shutil.which("callgrind_annotate")
    if annotate is None:
        return "(callgrind_annotate not found)"
    out = subprocess.run([annotate, "--inclusive=no", "--threshold=100", str(path)], capture_output=True,
                         text=True, check=False).stdout
    lines = [ln for ln in out.splitlines() if ln.strip() and ln.strip()[0].isdigit()]
    if not lines:
        return "(no profile lines)"
    # The first numeric line is the profile's total. In a profile dumped mid-run the functions on the call stack
    # of the measurement (main, the interpreter's entry points) are listed with the whole total: skip them.
    total = lines[0].split()[0]
    return "\n".join([lines[0]] + [ln for ln in lines[1:] if ln.split()[0] != total][:n])


def measure(configs: list[tuple[str, bool]], batch: int, steps: int, warmup: int = 10, seed: int = 0,
            tree: Path | None = None, top: int = 0) -> list[dict[str, Any]]:
    """Instructions per step for each ``(env_id, discrete)`` in one child under callgrind (see the module doc)."""
    valgrind = _valgrind()
    tree = (tree or _ROOT).resolve()
    # Checkouts before 0.2.0 import their port as top-level `envs`; later ones as marl_stability.envs (resolved
    # to that checkout's envs/ folder by its marl_stability/__init__.py).
    top_level_envs = "_SourceCheckoutFinder" not in (tree / "marl_stability" / "__init__.py").read_text()
    spec = {"configs": configs, "batch": batch, "steps": steps, "warmup": warmup, "seed": seed,
            "top_level_envs": top_level_envs}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        cmd = [valgrind, "--tool=callgrind", "--collect-atstart=no", f"--toggle-collect={_MARKER}",
               f"--dump-after={_MARKER}", f"--callgrind-out-file={out}", sys.executable, "-c", _CHILD,
               str(Path(__file__).resolve()), json.dumps(spec)]
        env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("==")]
            raise RuntimeError(f"the measurement failed (exit {proc.returncode}): {tail[-1] if tail else '?'}")
        dumps = sorted(Path(tmp).glob("callgrind.out.*"), key=lambda p: int(p.name.rsplit(".", 1)[1]))
        if len(dumps) != len(configs):
            raise RuntimeError(f"expected {len(configs)} callgrind profiles, found {len(dumps)} (a python without a "
                               f"symbol table for {_MARKER}? {sys.executable})")
        results = []
        for (env_id, discrete), dump in zip(configs, dumps):
            total = _dump_total(dump)
            row = {"env": env_id, "actions": "discrete" if discrete else "continuous", "batch": batch,
                   "steps": steps, "instructions": total, "instructions_per_step": round(total / steps)}
            if top:
                row["top_functions"] = _top_functions(dump, top)
            results.append(row)
    return results


def _positive(name: str, value: int, minimum: int) -> int:
    if value < minimum:
        raise UserError(f"{name} must be >= {minimum}, got {value}")
    return value


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="simple_push_v3", help="task id, or several separated by commas")
    ap.add_argument("--batch", type=int, default=256, help="env copies B (default 256)")
    ap.add_argument("--steps", type=int, default=50, help="measured steps (default 50)")
    ap.add_argument("--warmup", type=int, default=10, help="steps before the measurement (default 10; Python's "
                    "adaptive interpreter specializes code in the first calls)")
    kind = ap.add_mutually_exclusive_group()
    kind.add_argument("--discrete", action="store_true", help="discrete actions (default: continuous)")
    kind.add_argument("--both", action="store_true", help="continuous and discrete actions")
    ap.add_argument("--seed", type=int, default=0, help="env and action seed (default 0)")
    ap.add_argument("--tree", type=Path, default=None, help="measure this checkout's envs package instead")
    ap.add_argument("--top", type=int, default=0, help="also print the N most expensive C functions per task")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object")
    return ap.parse_args(argv)


def _configs(args: argparse.Namespace) -> list[tuple[str, bool]]:
    from marl_stability.envs.fast_mpe import SUPPORTED_ENV_IDS
    ids = [e.strip() for e in args.env.split(",") if e.strip()]
    unknown = [e for e in ids if e not in SUPPORTED_ENV_IDS]
    if not ids or unknown:
        raise UserError(f"unknown env id(s) {unknown or [args.env]} (supported: {', '.join(SUPPORTED_ENV_IDS)})")
    kinds = [False, True] if args.both else [bool(args.discrete)]
    _positive("--batch", args.batch, 1)
    _positive("--steps", args.steps, 1)
    _positive("--warmup", args.warmup, 0)
    _positive("--top", args.top, 0)
    if args.tree is not None and not (args.tree / "envs" / "fast_mpe.py").is_file():
        raise UserError(f"--tree {args.tree}: no envs/fast_mpe.py there")
    return [(e, d) for e in ids for d in kinds]


def main(argv: list[str] | None = None) -> None:
    args = _args(argv)
    try:
        _valgrind()  # first: without it nothing else matters (and no env package needs importing)
        configs = _configs(args)
        results = measure(configs, args.batch, args.steps, args.warmup, args.seed, args.tree, args.top)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    if args.json:
        print(json.dumps({"results": results}, indent=1))
        return
    for row in results:
        print(f"{row['env']:27s} {row['actions']:10s} B={row['batch']}: {row['instructions_per_step']:>12,} "
              f"instructions/step ({row['steps']} steps)", flush=True)
        if "top_functions" in row:
            print(row["top_functions"])


if __name__ == "__main__":
    main()
