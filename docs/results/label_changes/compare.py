"""How many runs change label between 0.1.0's rule and today's (docs/detectors.md, "What the 0.2.0 labels changed").

    git worktree add /tmp/old7d 7d84308
    .venv/bin/python docs/results/label_changes/compare.py /tmp/old7d RUN_FOLDER...

0.1.0's label needs only summary.json and config.yaml (its collapse onset read the scalars; the label did not), so
the old rule runs in a child interpreter with the old checkout first on the path; today's comes from the run reader.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

OLD = r"""
import glob, json, os, sys
sys.path.insert(0, sys.argv[1])
import yaml
from marl_stability.core.summary import RunSummary
from marl_stability.runs.records import label_run
out = {}
for root in sys.argv[2:]:
    for f in glob.glob(os.path.join(root, '**', 'summary.json'), recursive=True):
        d = os.path.dirname(f)
        if os.path.isfile(os.path.join(d, 'config.yaml')):
            try:
                s = RunSummary.model_validate(json.load(open(f)))
            except Exception:
                continue
            out[os.path.realpath(d)] = label_run(s, yaml.safe_load(open(os.path.join(d, 'config.yaml'))), {})[0]
json.dump(out, sys.stdout)
"""


def main(old_checkout: str, roots: list[str]) -> None:
    from marl_stability.runs.record import find_runs

    old = json.loads(subprocess.run([sys.executable, "-c", OLD, old_checkout, *roots], check=True,
                                    capture_output=True, text=True).stdout)
    new = {}
    for r in find_runs([Path(x) for x in roots]):
        if not r.skip_reason():
            new[str(Path(r.dir).resolve())] = (r.label.label, r.label.kind)
    both = sorted(set(old) & set(new))
    counts = collections.Counter((old[k], *new[k]) for k in both)
    print(f"{len(both)} runs labelled by both rules")
    for (before, after, kind), n in sorted(counts.items()):
        print(f"  {before} -> {after}{f' ({kind})' if kind else ''}: {n}")
    for k in both:
        if old[k] != new[k][0]:
            print(f"  changed: {k}: {old[k]} -> {new[k][0]} ({new[k][1]})")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
