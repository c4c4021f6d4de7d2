"""The analysis, study and benchmark tools as ``marl-stability`` subcommands.

Each tool keeps its own argument parser (``python -m marl_stability.<module>`` still works); the subcommand
hands it every argument after its name, ``--help`` included, so the two spellings behave the same.
"""

from __future__ import annotations

import importlib
import sys

import typer

# subcommand -> (module with main(argv), one-line help shown by `marl-stability --help`)
TOOLS: dict[str, tuple[str, str]] = {
    "mechanism": ("marl_stability.analysis.mechanism",
                  "Which road each run took to the failure (explosion-first / saturation-first), from its logs."),
    "fix-evidence": ("marl_stability.analysis.fix_evidence",
                     "What each single fix measured against each road: the table doctor ranks fixes by."),
    "cross-task": ("marl_stability.analysis.cross_task",
                   "The repeated-action verdicts across tasks (reproduction and single-fix sweeps)."),
    "anchors": ("marl_stability.runs.anchors",
                "Measure a task's score anchors: random, do-nothing and simple policies (and spread's optimum)."),
    "learning-table": ("marl_stability.studies.learning_table",
                       "Final return per seed of a sweep against a target, and the mean curve at chosen steps."),
    "compare-runs": ("marl_stability.studies.compare_runs",
                     "Compare groups of finished runs side by side (IQM, bootstrap intervals, P(improvement))."),
    "bench": ("marl_stability.bench.speed",
              "Benchmarks: env speed against mpe2 and full training runs, ratios measured in one run."),
    "bench-instr": ("marl_stability.bench.instructions",
                    "Instructions per env step of the fast mpe2 port, counted by valgrind (not wall clock)."),
    "bench-instrumentation": ("marl_stability.bench.instrumentation",
                              "Cost of the instrumentation: the same run with and without a piece of it."),
    "bench-reading": ("marl_stability.bench.reading",
                      "CPU time of doctor, mechanism and calibrate over the same runs, for one or two checkouts."),
    "bench-versions": ("marl_stability.bench.versions",
                       "Training speed of two checkouts of this project, interleaved in one run."),
    "tb-screenshot": ("marl_stability.bench.tb_screenshot",
                      "Screenshots of TensorBoard on a log directory, in headless Chromium."),
}
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


# The command line as given (set by cli.main.main): click drops a "--" from a command's extra arguments, after
# which argparse must see every word as positional, so a tool takes its arguments from here.
RAW_ARGS: list[list[str]] = []


def tool_args(name: str, parsed: list[str]) -> list[str]:
    """The words after the subcommand ``name``, exactly as given (``--`` kept); click's ``parsed`` otherwise."""
    raw = RAW_ARGS[-1] if RAW_ARGS else []
    if name in raw:
        rest = raw[raw.index(name) + 1:]
        if [w for w in rest if w != "--"] == [w for w in parsed if w != "--"]:
            return rest
    return parsed


def _command(module: str, name: str):  # type: ignore[no-untyped-def]
    def run(ctx: typer.Context) -> None:
        tool = importlib.import_module(module)
        program = sys.argv[0]
        sys.argv[0] = f"marl-stability {name}"  # argparse's default prog: usage lines name the subcommand
        try:
            tool.main(tool_args(name, list(ctx.args)))
        finally:
            sys.argv[0] = program

    return run


def register(app: typer.Typer) -> None:
    for name, (module, help_text) in TOOLS.items():
        app.command(name, help=help_text, context_settings=PASS_THROUGH)(_command(module, name))
