"""The release surface: one version everywhere, a changelog entry for it, a lock that pins every dependency the
project declares and that both README commands install, and the BLAS-kernel loop CI runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

from marl_stability import __version__
from marl_stability.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


def _locked() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version), line  # exact pins only
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_version_is_semver_with_a_changelog_entry(capsys) -> None:  # type: ignore[no-untyped-def]
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)
    assert f"## [{__version__}] - " in (ROOT / "CHANGELOG.md").read_text()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["dynamic"] == ["version"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "marl_stability.__version__"}
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code in (0, None)
    assert capsys.readouterr().out.strip() == f"marl-stability {__version__}"


def test_lock_pins_every_declared_dependency() -> None:
    """Every runtime and test dependency in pyproject has one exact pin that satisfies its declared range;
    torch is the CPU build the Makefile installs first."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]
    pins = _locked()
    for req in declared:
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{req.name} is not in requirements.lock (run make lock)"
        assert req.specifier.contains(pins[name], prereleases=True), (req, pins[name])
    assert pins["torch"] == "2.13.0"


def test_readme_commands_install_the_lock() -> None:
    make = (ROOT / "Makefile").read_text()
    install = re.search(r"^\$\(VENV\)/\.installed: (.*?)\n\n", make, re.S | re.M)
    assert install and "$(LOCK)" in install.group(1).splitlines()[0]
    assert "-c $(LOCK) -e '.[test]'" in install.group(1) and "LOCK := requirements.lock" in make
    for target in ("test", "reproduce", "test-kernels"):
        assert re.search(rf"^{target}: setup$", make, re.M), target
    assert re.search(r"^test-latest:$", make, re.M) and re.search(r"^lock:$", make, re.M)
    assert "make test-kernels" in (ROOT / ".ci" / "run").read_text()


def test_blas_kernel_loop_finds_the_default_kernel() -> None:
    """.ci/blas_kernels.py --list probes each OpenBLAS family in a child process; the default always runs."""
    out = subprocess.run([sys.executable, str(ROOT / ".ci" / "blas_kernels.py"), "--list"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    listed = out.stdout.strip().splitlines()[-1]
    assert listed.startswith("blas-kernels: default -> "), listed
    names = [item.split(" -> ")[1] for item in listed.removeprefix("blas-kernels: ").split(", ")]
    assert len(names) == len(set(names))  # one run per kernel OpenBLAS really loaded


def test_every_source_file_is_tracked_by_git() -> None:
    """A fresh clone has every module of the three packages (an ignore pattern once hid marl_stability/runs/:
    the tests passed in the working tree and a clone could not import doctor)."""
    import shutil

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        import pytest

        pytest.skip("not a git checkout")
    tracked = set(subprocess.run(["git", "ls-files", "marl_stability", "envs", "agents", "experiments"], cwd=ROOT,
                                 capture_output=True, text=True, check=True).stdout.split())
    on_disk = {p.relative_to(ROOT).as_posix() for top in ("marl_stability", "envs", "agents", "experiments")
               for p in (ROOT / top).rglob("*") if p.is_file() and p.suffix in (".py", ".yaml", ".json")
               and "__pycache__" not in p.parts}
    assert sorted(on_disk - tracked) == []
