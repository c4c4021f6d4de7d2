"""Reading runs through one owner: the columnar scalar file (format, resume truncation, corrupt files), the event
file fallback and its cache, and ``RunRecord`` on a real run (config, summary, scalars, histograms, text, label,
discovery)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from marl_stability.core.scalar_file import SCALAR_FILE, ScalarColumns, read_columns, read_scalar_file, write_scalar_file
from marl_stability.runs import scalars as scalars_mod
from marl_stability.runs.record import RunRecord, find_runs
from marl_stability.runs.scalars import CACHE_FILE, read_scalars
from scalar_files import assert_scalar_file_exact

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- the format
def test_columns_round_trip_in_logging_order_with_float32_values(tmp_path: Path) -> None:
    cols = ScalarColumns()
    for step, tag, value in [(1, "b", 0.1), (1, "a", float("nan")), (2, "b", 1e30), (2, "b", -2.5), (3, "a", 7.0)]:
        cols.append(tag, step, value)
    write_scalar_file(tmp_path / "s.npz", cols, source="trainer", complete=True)
    view, meta = read_scalar_file(tmp_path / "s.npz")
    assert meta == {"format": 1, "source": "trainer", "complete": True}
    assert list(view) == ["b", "a"]  # first-logged order, as TensorBoard's reader lists them
    assert view["b"] == [(1, float(np.float32(0.1))), (2, 1.0000000150474662e30), (2, -2.5)]  # duplicates kept
    assert view["a"][0][0] == 1 and np.isnan(view["a"][0][1]) and view["a"][1] == (3, 7.0)


def test_truncate_after_drops_what_a_killed_run_wrote_after_its_checkpoint(tmp_path: Path) -> None:
    cols = ScalarColumns()
    for step in (100, 200, 300):
        cols.append("x", step, step / 10)
    cols.append("late", 300, 1.0)
    write_scalar_file(tmp_path / SCALAR_FILE, cols, source="trainer", complete=False)
    again = read_columns(tmp_path / SCALAR_FILE)
    again.truncate_after(200)
    assert list(again.steps) == ["x"] and list(again.steps["x"]) == [100, 200]


@pytest.mark.parametrize("content", [b"", b"not a zip", b"PK\x03\x04broken"])
def test_a_corrupt_scalar_file_reads_as_absent(tmp_path: Path, content: bytes) -> None:
    (tmp_path / SCALAR_FILE).write_bytes(content)
    assert read_scalar_file(tmp_path / SCALAR_FILE) is None and read_columns(tmp_path / SCALAR_FILE) is None


def test_another_format_reads_as_absent(tmp_path: Path) -> None:
    cols = ScalarColumns()
    cols.append("x", 1, 1.0)
    arrays = cols.arrays()
    np.savez(tmp_path / SCALAR_FILE, meta=np.array(json.dumps({"format": 99})), **arrays)
    assert read_scalar_file(tmp_path / SCALAR_FILE) is None


# ---------------------------------------------------------------------------------------------- event fallback
def _old_run(folder: Path) -> Path:
    """A run as a version before 0.2.0 left it: event files only, tags under their old names."""
    from torch.utils.tensorboard import SummaryWriter

    folder.mkdir(parents=True)
    w = SummaryWriter(str(folder))
    for step in range(0, 500, 100):
        w.add_scalar("actor/saturation/agent_0", step / 1000, step)
        w.add_scalar("eval/team_return", -60.0 + step / 100, step)
    w.close()
    return folder


def test_old_runs_are_read_from_events_once_then_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _old_run(tmp_path / "old")
    first = read_scalars(run)
    assert sorted(first) == ["eval/team_return", "policy/saturation/agent_0"]  # renamed to today's tag
    assert first["policy/saturation/agent_0"][-1] == (400, float(np.float32(0.4)))
    assert (run / CACHE_FILE).is_file() and not (run / SCALAR_FILE).exists()

    def no_parsing(_: Path) -> None:
        raise AssertionError("the event files were parsed again")

    monkeypatch.setattr(scalars_mod, "read_event_columns", no_parsing)
    assert dict(read_scalars(run)) == dict(first)
    monkeypatch.undo()

    from torch.utils.tensorboard import SummaryWriter  # the run grows: the cache no longer matches its files

    w = SummaryWriter(str(run))
    w.add_scalar("eval/team_return", -50.0, 900)
    w.close()
    assert read_scalars(run)["eval/team_return"][-1] == (900, -50.0)


def test_a_read_only_run_is_read_without_a_cache(tmp_path: Path) -> None:
    run = _old_run(tmp_path / "ro")
    os.chmod(run, 0o555)
    try:
        if os.access(run, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        assert read_scalars(run)["eval/team_return"][0] == (0, -60.0)
        assert not (run / CACHE_FILE).exists()
    finally:
        os.chmod(run, 0o755)


def test_an_incomplete_trainer_file_falls_back_to_the_events(tmp_path: Path) -> None:
    run = _old_run(tmp_path / "running")
    partial = ScalarColumns()
    partial.append("eval/team_return", 0, -60.0)
    write_scalar_file(run / SCALAR_FILE, partial, source="trainer", complete=False)
    assert len(read_scalars(run)["eval/team_return"]) == 5


# ---------------------------------------------------------------------------------------------- a real run
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from marl_stability.config import load_config
    from marl_stability.training.trainer import Trainer

    overrides = ["maddpg.warmup_steps=300", "maddpg.batch_size=64", "maddpg.update_every=10", "train.eval_every=500",
                 "train.eval_episodes=2", "train.checkpoint_every=500", "train.steps=1000", "train.log_every=1"]
    run = tmp_path_factory.mktemp("record") / "sweep" / "runs" / "arm" / "seed_0"
    Trainer(load_config(ROOT / "experiments" / "maddpg_spread.yaml", overrides), run, quiet=True).run()
    return run


def test_the_trainer_writes_a_scalar_file_equal_to_its_event_files(tiny_run: Path) -> None:
    assert_scalar_file_exact(tiny_run)
    assert not (tiny_run / CACHE_FILE).exists()  # nothing to cache: the run has its own file
    size = (tiny_run / SCALAR_FILE).stat().st_size
    events = sum(p.stat().st_size for p in tiny_run.glob("events.out.tfevents.*"))
    assert size < events, (size, events)  # per-update runs: ~1/4 (measured in docs/architecture)


def test_run_record_reads_every_part_of_a_run(tiny_run: Path) -> None:
    run = RunRecord(tiny_run)
    assert run.config["algo"] == "maddpg" and run.summary.status == "completed" and run.summary.env_steps == 1000
    # both from the same evaluations; scalars keep TensorBoard's float32
    assert run.series("eval/team_return") == [(s, float(np.float32(v))) for s, v in run.summary.returns()]
    assert set(run.last_values("eval/agent_return/")) == {"agent_0", "agent_1", "agent_2"}
    hist = run.histograms("hist/eval_actions/")
    assert hist and all(h.counts.sum() > 0 for series in hist.values() for h in series)
    texts = run.texts()
    assert "Summary" in texts and "completed" in texts["Summary"][-1][1]
    assert run.skip_reason() is None and run.label.label in ("healthy", "collapsed", "degraded")
    assert run.label.onset is None or run.label.label in ("collapsed", "degraded")


def test_discovery_finds_runs_at_any_depth_once(tiny_run: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(tiny_run, tree / "a" / "deep" / "run1")
    shutil.copytree(tiny_run, tree / "b")
    (tree / "notes").mkdir()
    found = find_runs([tree, tree / "b"])
    assert [r.dir.relative_to(tree.resolve()).as_posix() for r in found] == ["a/deep/run1", "b"]


def test_histograms_are_read_as_tensorboard_reads_them_purge_and_truncation_included(tmp_path: Path) -> None:
    """RunRecord reads histograms without TensorBoard's pure-Python CRC checks (event_histograms): the same series
    as TensorBoard's EventAccumulator, for a resumed run whose purge_step drops what a killed run wrote after its
    checkpoint, and for a last record cut short."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from marl_stability.runs.record import event_histograms

    rng = np.random.default_rng(0)
    first = SummaryWriter(str(tmp_path))
    for step in range(1, 6):
        first.add_histogram("hist/eval_actions/agent_0", rng.normal(size=50), step)
    first.close()
    resumed = SummaryWriter(str(tmp_path), purge_step=3, filename_suffix=".b")  # a resume at step 3
    for step in (3, 4, 6):
        resumed.add_histogram("hist/eval_actions/agent_0", rng.normal(size=50), step)
        resumed.add_scalar("eval/team_return", -1.0, step)
    resumed.close()

    def accumulated() -> dict:
        acc = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0})
        acc.Reload()
        return {t: [(e.step, list(e.histogram_value.bucket_limit), list(e.histogram_value.bucket)) for e in acc.Histograms(t)]
                for t in acc.Tags()["histograms"]}

    def ours() -> dict:
        return {t: [(h.step, list(h.edges), list(h.counts)) for h in s] for t, s in event_histograms(tmp_path).items()}

    assert [step for step, _, _ in ours()["hist/eval_actions/agent_0"]] == [1, 2, 3, 4, 6]
    assert ours() == accumulated()
    last = sorted(tmp_path.glob("events.out.tfevents.*"))[-1]
    data = last.read_bytes()
    for cut in (len(data) - 7, len(data) // 2):  # a run killed mid-write: its last record cut short
        last.write_bytes(data[:cut])
        assert ours() == accumulated()
    assert len(ours()["hist/eval_actions/agent_0"]) < 5
