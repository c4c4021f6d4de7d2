"""Fix-ablation sweeps: an ablation file -> arms (configs) x seeds -> trials run in parallel, resumable.

One module per step, each importing only the ones before it (none imports the report)::

    spec       the ablation file (AblationFile, load_ablation) and its design (expand_design)
    layout     the sweep directory: run folders, the plan (arms.json) and the trial index (index.json)
    plan       ablation file -> validated Plan (every arm's config checked, envs probed)
    trial      one trial in a worker (Trial, run_trial)
    backends   where trials run (LocalBackend, RayBackend, make_backend)
    runner     run_sweep: the trials left, dispatched to a backend, recorded in the index

The directory layout is described in ``marl_stability.runs.sweep_layout``. The report (``marl_stability.studies.report``)
is built by the caller after ``run_sweep`` returns.
"""

from marl_stability.core.summary import read_summary
from marl_stability.runs.sweep_layout import (
    FINAL_STATUSES,
    INDEX_FORMAT,
    TRIAL_STATES,
    Arm,
    Plan,
    read_index,
    read_plan,
    run_dir_of,
    trial_id,
)
from marl_stability.studies.sweep.backends import (
    Backend,
    LocalBackend,
    RayBackend,
    WorkerLost,
    make_backend,
)
from marl_stability.studies.sweep.plan import make_plan
from marl_stability.studies.sweep.runner import MAX_ATTEMPTS, SweepOutcome, run_sweep
from marl_stability.studies.sweep.spec import (
    AblationFile,
    ArmSpec,
    BaseSpec,
    FactorSpec,
    SeedChoice,
    default_reference,
    expand_design,
    load_ablation,
    override_strings,
)
from marl_stability.studies.sweep.trial import (
    FAIL_ENV_VAR,
    Trial,
    TrialResult,
    one_line,
    run_trial,
)

__all__ = [
    "FAIL_ENV_VAR", "FINAL_STATUSES", "INDEX_FORMAT", "MAX_ATTEMPTS", "TRIAL_STATES", "AblationFile", "Arm", "ArmSpec",
    "Backend", "BaseSpec", "FactorSpec", "LocalBackend", "Plan", "RayBackend", "SeedChoice", "SweepOutcome", "Trial", "TrialResult",
    "WorkerLost", "default_reference", "expand_design", "load_ablation", "make_backend", "make_plan", "one_line",
    "override_strings", "read_index", "read_plan", "read_summary", "run_dir_of", "run_sweep", "run_trial", "trial_id",
]
