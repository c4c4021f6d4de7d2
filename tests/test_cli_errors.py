"""Every user error of the CLI: exit code 2, exactly one ``error: ...`` line on stderr, no traceback, and
nothing that existed on disk before is changed (or anything new left behind).

Most cases run in-process through ``marl_stability.cli.main.main``; a few go through ``python -m marl_stability``.
Cases that pass validation as far as building the env use ``--overwrite`` on an existing run directory, so
an error raised too late would show up as a deleted sentinel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from marl_stability.cli.main import main
from marl_stability.config import dump_yaml, load_config

PRESET = Path(__file__).resolve().parent.parent / "experiments" / "maddpg_spread.yaml"
TINY = [
    "--set", "maddpg.warmup_steps=50", "--set", "maddpg.batch_size=16", "--set", "maddpg.update_every=10",
    "--set", "train.eval_every=100", "--set", "train.eval_episodes=2", "--set", "train.checkpoint_every=100",
    "--set", "maddpg.buffer_size=1000", "--set", "env.num_envs=1",
]


# --------------------------------------------------------------------------- helpers
def run_inprocess(args: list[Any], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return int(exc.value.code), out, err


def run_subprocess(args: list[Any], cwd: Path) -> tuple[int, str, str]:
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)
    proc = subprocess.run([sys.executable, "-m", "marl_stability", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def assert_user_error(code: int, out: str, err: str, *must_contain: str) -> str:
    assert "Traceback" not in err and "Traceback" not in out
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert err.endswith("\n")
    line = lines[0]
    assert line.startswith("error: "), line
    for text in must_contain:
        assert text in line, f"{text!r} not in {line!r}"
    return line


class Workspace:
    """tmp_path/runs/old holds a previous run's files; everything under tmp_path must survive byte for byte."""

    def __init__(self, root: Path, snapshot: Any) -> None:
        self.root = root
        self.logdir = root / "runs"
        self.old = self.logdir / "old"
        (self.old / "checkpoints").mkdir(parents=True)
        (self.old / "sentinel.txt").write_text("do not touch\n")
        (self.old / "checkpoints" / "last.pt").write_bytes(b"precious previous checkpoint bytes")
        self._snapshot = snapshot
        self.before: dict[str, bytes | None] = {}

    def freeze(self) -> None:
        self.before = self._snapshot(self.root)

    def assert_unchanged(self) -> None:
        after = self._snapshot(self.root)
        assert sorted(after) == sorted(self.before), "files were created or deleted"
        for k, v in self.before.items():
            assert after[k] == v, f"{k} changed"


@pytest.fixture
def ws(tmp_path: Path, snapshot: Any) -> Workspace:
    return Workspace(tmp_path, snapshot)


# --------------------------------------------------------------------------- bad values on the command line
# (id, extra arguments, substrings the error line must contain)
BAD_ARGS = [
    ("unknown_env_option", ["--env", "simple_nope_v9"], ["unknown env id", "simple_nope_v9"]),
    ("unknown_env_set", ["--set", "env.id=nope_v1"], ["unknown env id", "nope_v1"]),
    ("unknown_key_set", ["--set", "actor.hiden_sizes=[8]"], ["actor.hiden_sizes", "unknown key"]),
    ("unknown_section_set", ["--set", "optimizer.lr=0.1"], ["optimizer", "unknown key"]),
    ("wrong_type_lr", ["--set", "actor_optim.lr=abc"], ["actor_optim.lr"]),
    ("wrong_type_steps_list", ["--set", "train.steps=[1]"], ["train.steps"]),
    ("negative_clip", ["--set", "fixes.grad_clip.critic.max=-1"], ["fixes.grad_clip.critic.max", "greater than 0"]),
    ("zero_steps", ["--steps", "0"], ["train.steps"]),
    ("negative_seed", ["--seed", "-1"], ["seed"]),
    ("unknown_fix_mode", ["--set", "fixes.grad_clip.actor.mode=sometimes"], ["fixes.grad_clip.actor.mode", "global_norm"]),
    ("unknown_activation", ["--set", "critic.activation=swish"], ["critic.activation", "relu"]),
    ("empty_hidden_sizes", ["--set", "actor.hidden_sizes=[]"], ["hidden_sizes"]),
    ("set_without_equals", ["--set", "actor_optim.lr"], ["--set", "key.path=value"]),
    ("set_empty_key_part", ["--set", "actor..lr=1"], ["--set", "bad key"]),
    ("set_unparsable_value", ["--set", "actor_optim.lr=[1"], ["actor_optim.lr", "cannot parse"]),
    ("bad_env_kwarg", ["--set", "env.kwargs.bogus=1"], ["bogus"]),
    ("bad_env_kwarg_type", ["--set", "env.kwargs.N=1.5"], ["simple_spread_v3"]),
    ("discrete_with_bounded_head",
     ["--set", "env.kwargs.continuous_actions=false", "--set", "actor.output=tanh_scaled"],
     ["actor.output=tanh_scaled", "continuous"]),
    ("resume_and_overwrite", ["--resume"], ["--resume", "--overwrite"]),
    ("unknown_cli_option", ["--frobnicate"], ["--frobnicate"]),
    ("steps_not_a_number", ["--steps", "notanumber"], ["--steps"]),
    ("name_with_slash", ["--name", "a/b"], ["--name"]),
]


@pytest.mark.parametrize("extra, expected", [c[1:] for c in BAD_ARGS], ids=[c[0] for c in BAD_ARGS])
def test_bad_argument_is_one_error_line_and_touches_nothing(
    ws: Workspace, preset: Path, capsys: pytest.CaptureFixture[str], extra: list[str], expected: list[str]
) -> None:
    ws.freeze()
    # --overwrite on an existing run: any error must come before the old run is deleted.
    args = ["train", "-c", preset, "--logdir", ws.logdir, "--name", "old", "--overwrite", "-q", *TINY, *extra]
    code, out, err = run_inprocess(args, capsys)
    assert_user_error(code, out, err, *expected)
    ws.assert_unchanged()


def test_error_without_name_creates_no_default_run_dir(ws: Workspace, preset: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    ws.freeze()
    code, out, err = run_inprocess(["train", "-c", preset, "--logdir", ws.logdir, "--set", "env.kwargs.bogus=1"],
                                   capsys)
    assert_user_error(code, out, err, "bogus")
    ws.assert_unchanged()


# --------------------------------------------------------------------------- bad config files
def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _circular(d: Path) -> Path:
    _write(d / "b.yaml", b"base: a.yaml\nseed: 2\n")
    return _write(d / "a.yaml", b"base: b.yaml\nseed: 1\n")


CONFIG_FILES = [
    ("missing", lambda d: d / "does_not_exist.yaml", ["config file not found", "does_not_exist.yaml"]),
    ("directory", lambda d: d, ["cannot read config file"]),
    ("malformed_yaml", lambda d: _write(d / "bad.yaml", b"actor: [1, 2\ncritic: {\n"), ["malformed YAML", "bad.yaml"]),
    ("top_level_list", lambda d: _write(d / "list.yaml", b"- seed: 1\n- seed: 2\n"), ["top level must be a mapping"]),
    ("unknown_yaml_key", lambda d: _write(d / "unk.yaml", b"maddpg:\n  gama: 0.9\n"), ["maddpg.gama", "unknown key"]),
    ("wrong_yaml_type", lambda d: _write(d / "typ.yaml", b"train: {steps: many}\n"), ["typ.yaml", "train.steps"]),
    ("missing_base", lambda d: _write(d / "child.yaml", b"base: nowhere.yaml\nseed: 3\n"),
     ["config file not found", "nowhere.yaml"]),
    ("base_not_a_name", lambda d: _write(d / "child.yaml", b"base: [1, 2]\n"), ["child.yaml", "base"]),
    ("self_base", lambda d: _write(d / "self.yaml", b"base: self.yaml\n"), ["circular"]),
    ("circular_base", _circular, ["circular"]),
    ("not_utf8", lambda d: _write(d / "bin.yaml", b"\xff\xfe\x00garbage"), ["cannot read config file", "bin.yaml"]),
]


@pytest.mark.parametrize("make, expected", [c[1:] for c in CONFIG_FILES], ids=[c[0] for c in CONFIG_FILES])
def test_bad_config_file(ws: Workspace, capsys: pytest.CaptureFixture[str], make: Any, expected: list[str]) -> None:
    cfg_dir = ws.root / "cfg"
    cfg_dir.mkdir()
    path = make(cfg_dir)
    ws.freeze()
    code, out, err = run_inprocess(["train", "-c", path, "--logdir", ws.logdir, "--name", "old", "--overwrite"], capsys)
    assert_user_error(code, out, err, *expected)
    ws.assert_unchanged()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read a chmod 000 file")
def test_unreadable_config_file(ws: Workspace, preset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = ws.root / "locked.yaml"
    shutil.copy(preset, path)
    path.chmod(0)
    try:
        before = ws._snapshot(ws.logdir)
        code, out, err = run_inprocess(["train", "-c", path, "--logdir", ws.logdir, "--name", "old", "--overwrite"],
                                       capsys)
        assert_user_error(code, out, err, "cannot read config file", "locked.yaml")
        assert ws._snapshot(ws.logdir) == before
    finally:
        path.chmod(0o644)


# --------------------------------------------------------------------------- run directories and checkpoints
def test_existing_run_dir_needs_resume_or_overwrite(ws: Workspace, preset: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    ws.freeze()
    code, out, err = run_inprocess(["train", "-c", preset, "--logdir", ws.logdir, "--name", "old", *TINY], capsys)
    assert_user_error(code, out, err, "already exists", "--resume", "--overwrite")
    ws.assert_unchanged()
    assert (ws.old / "sentinel.txt").read_text() == "do not touch\n"


def test_resume_without_checkpoint(ws: Workspace, preset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (ws.old / "checkpoints" / "last.pt").unlink()
    ws.freeze()
    code, out, err = run_inprocess(["train", "-c", preset, "--logdir", ws.logdir, "--name", "old", "--resume"], capsys)
    assert_user_error(code, out, err, "--resume", "no checkpoint")
    ws.assert_unchanged()


def test_resume_needs_name_and_config_must_exist(ws: Workspace, preset: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    ws.freeze()
    code, out, err = run_inprocess(["train", "-c", preset, "--logdir", ws.logdir, "--resume"], capsys)
    assert_user_error(code, out, err, "--resume", "--name")
    # train without --config runs the default preset (tests/test_edges.py); an unknown one lists the presets.
    code, out, err = run_inprocess(["train", "-c", "no_such_preset", "--logdir", ws.logdir, "--name", "new"], capsys)
    assert_user_error(code, out, err, "config file not found", "no_such_preset", "maddpg_spread")
    ws.assert_unchanged()


def _tiny_config_yaml(preset: Path) -> str:
    return dump_yaml(load_config(preset, [*TINY[1::2], "train.steps=200"]))


def _garbage_pickle() -> bytes:
    return b"\x80\x04\x95garbage that is not a torch checkpoint\x00\xff" * 10


@pytest.mark.parametrize(
    "content, expected",
    [
        (_garbage_pickle(), ["cannot load checkpoint", "corrupt"]),
        (b"", ["cannot load checkpoint"]),
        ("list", ["not a marl-stability checkpoint"]),
        ("format99", ["format 99"]),
    ],
    ids=["garbage", "empty", "not_a_dict", "wrong_format"],
)
def test_corrupt_checkpoint(ws: Workspace, preset: Path, capsys: pytest.CaptureFixture[str],
                            content: Any, expected: list[str]) -> None:
    run = ws.logdir / "corrupt"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(_tiny_config_yaml(preset))
    ckpt = run / "checkpoints" / "last.pt"
    if content == "list":
        torch.save([1, 2, 3], ckpt)
    elif content == "format99":
        torch.save({"format": 99}, ckpt)
    else:
        ckpt.write_bytes(content)
    ws.freeze()
    # no -c: the config comes from the run directory's config.yaml
    code, out, err = run_inprocess(["train", "--logdir", ws.logdir, "--name", "corrupt", "--resume", "-q"], capsys)
    assert_user_error(code, out, err, *expected)
    ws.assert_unchanged()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real training (200 env steps, a few updates, a checkpoint), run once for this module."""
    logdir = tmp_path_factory.mktemp("trained")
    main(["train", "-c", str(PRESET), "--steps", "200", *TINY, "--set", "train.checkpoints=resume", "--logdir",
          str(logdir), "--name", "tiny", "-q"])
    run = logdir / "tiny"
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "config.yaml").is_file()
    return run


@pytest.mark.parametrize(
    "override, key",
    [("actor_optim.lr=0.005", "actor_optim.lr"), ("fixes.obs_norm.enabled=false", "fixes.obs_norm.enabled")],
)
def test_checkpoint_from_another_config_names_the_key(trained_run: Path, tmp_path: Path, snapshot: Any,
                                                      capsys: pytest.CaptureFixture[str], override: str,
                                                      key: str) -> None:
    before = snapshot(trained_run.parent)
    code, out, err = run_inprocess(["train", "--logdir", trained_run.parent, "--name", trained_run.name, "--resume",
                                    "--steps", "300", "--set", override, "-q"], capsys)
    line = assert_user_error(code, out, err, "another config", key)
    assert line.count("(checkpoint ") == 1  # only the one key that really differs
    assert snapshot(trained_run.parent) == before


def test_truncated_real_checkpoint(trained_run: Path, tmp_path: Path, snapshot: Any,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "cut"
    shutil.copytree(trained_run, run)
    ckpt = run / "checkpoints" / "last.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    before = snapshot(tmp_path)
    code, out, err = run_inprocess(["train", "--logdir", tmp_path, "--name", "cut", "--resume", "-q"], capsys)
    assert_user_error(code, out, err, "cannot load checkpoint", "corrupt")
    assert snapshot(tmp_path) == before


def test_resume_of_a_finished_run_that_kept_its_final_checkpoint_only(tmp_path: Path, snapshot: Any,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """train.checkpoints=final (the default): the finished run cannot be extended, and says how to get that."""
    main(["train", "-c", str(PRESET), "--steps", "200", *TINY, "--logdir", str(tmp_path), "--name", "done", "-q"])
    assert sorted(p.name for p in (tmp_path / "done" / "checkpoints").iterdir()) == ["final.pt"]
    before = snapshot(tmp_path)
    code, out, err = run_inprocess(["train", "--logdir", tmp_path, "--name", "done", "--resume", "--steps", "300",
                                    "-q"], capsys)
    assert_user_error(code, out, err, "final checkpoint", "train.checkpoints=resume")
    assert snapshot(tmp_path) == before


def test_resume_with_the_same_config_works(trained_run: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Positive control for the mismatch test: the same config (only train.steps differs) resumes."""
    import json

    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    main(["train", "--logdir", str(tmp_path), "--name", "copy", "--resume", "--steps", "220", "-q"])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["env_steps"] == 220


# --------------------------------------------------------------------------- other commands
def test_config_command_unknown_key(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_inprocess(["config", "--set", "nope=1"], capsys)
    assert_user_error(code, out, err, "nope", "unknown key")
    assert out == ""


def test_envs_command_unknown_env(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_inprocess(["envs", "simple_nope_v9"], capsys)
    assert_user_error(code, out, err, "unknown env id", "simple_nope_v9")


def test_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_inprocess(["frobnicate"], capsys)
    assert_user_error(code, out, err, "frobnicate")


# --------------------------------------------------------------------------- through a real process
SUBPROCESS_CASES = [
    ("unknown_env", ["--env", "simple_nope_v9"], ["unknown env id"]),
    ("unknown_option", ["--frobnicate"], ["--frobnicate"]),
    ("negative_clip", ["--set", "fixes.grad_clip.critic.max=-1"], ["fixes.grad_clip.critic.max"]),
    ("discrete_with_bounded_head",
     ["--set", "env.kwargs.continuous_actions=false", "--set", "actor.output=tanh_scaled"], ["continuous"]),
]


@pytest.mark.parametrize("extra, expected", [c[1:] for c in SUBPROCESS_CASES], ids=[c[0] for c in SUBPROCESS_CASES])
def test_subprocess_error(ws: Workspace, preset: Path, extra: list[str], expected: list[str]) -> None:
    ws.freeze()
    code, out, err = run_subprocess(["train", "-c", preset, "--logdir", ws.logdir, "--name", "old", "--overwrite",
                                     *extra], cwd=ws.root)
    assert_user_error(code, out, err, *expected)
    assert out == ""
    ws.assert_unchanged()


def test_subprocess_malformed_yaml_and_corrupt_checkpoint(ws: Workspace, preset: Path) -> None:
    bad = _write(ws.root / "bad.yaml", b"seed: [\n")
    run = ws.logdir / "corrupt"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(_tiny_config_yaml(preset))
    (run / "checkpoints" / "last.pt").write_bytes(b"this is not a checkpoint\n" * 20)
    ws.freeze()
    code, out, err = run_subprocess(["train", "-c", bad, "--logdir", ws.logdir], cwd=ws.root)
    assert_user_error(code, out, err, "malformed YAML")
    code, out, err = run_subprocess(["train", "--logdir", ws.logdir, "--name", "corrupt", "--resume"], cwd=ws.root)
    assert_user_error(code, out, err, "cannot load checkpoint")
    ws.assert_unchanged()


# --------------------------------------------------------------------------- known bugs
def test_run_dir_path_is_a_file(ws: Workspace, preset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (ws.logdir / "afile").write_text("I am a file\n")
    ws.freeze()
    try:
        code, out, err = run_inprocess(["train", "-c", preset, "--logdir", ws.logdir, "--name", "afile", *TINY], capsys)
    except NotADirectoryError:
        pytest.fail("NotADirectoryError escaped main()")
    assert_user_error(code, out, err, "afile")
    ws.assert_unchanged()


def test_logdir_is_a_file(ws: Workspace, preset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logfile = ws.root / "logfile"
    logfile.write_text("not a folder\n")
    ws.freeze()
    try:
        code, out, err = run_inprocess(["train", "-c", preset, "--logdir", logfile, "--name", "x", *TINY], capsys)
    except NotADirectoryError:
        pytest.fail("NotADirectoryError escaped main()")
    assert_user_error(code, out, err, "logfile")
    ws.assert_unchanged()


def test_env_kwarg_of_wrong_type_fails_before_touching_disk(ws: Workspace, preset: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    ws.freeze()
    try:
        code, out, err = run_inprocess(["train", "-c", preset, "--logdir", ws.logdir, "--name", "old", "--overwrite",
                                        "-q", *TINY, "--set", "env.kwargs.max_cycles=abc"], capsys)
    except TypeError:
        pytest.fail("TypeError escaped main()")
    assert_user_error(code, out, err, "max_cycles")
    ws.assert_unchanged()


def test_subprocess_foreign_pickle_checkpoint_is_one_line(ws: Workspace, preset: Path) -> None:
    import pickle

    run = ws.logdir / "foreign"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(_tiny_config_yaml(preset))
    (run / "checkpoints" / "last.pt").write_bytes(pickle.dumps({"weights": [1.0, 2.0]}, protocol=4))
    ws.freeze()
    code, out, err = run_subprocess(["train", "--logdir", ws.logdir, "--name", "foreign", "--resume"], cwd=ws.root)
    ws.assert_unchanged()
    assert_user_error(code, out, err, "cannot load checkpoint")


def test_unwritable_logdir_is_one_error_line(preset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        main(["train", "-c", str(preset), "--logdir", "/proc/no_such_dir/runs", "--name", "x", "--steps", "100"])
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
