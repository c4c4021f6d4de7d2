"""Every ``python -m marl_stability.<tool>`` script answers a bad argument like the rest of the testbed: one line
``error: ...`` on stderr, exit code 2, no usage block and no traceback."""

from __future__ import annotations

import importlib

import pytest

from marl_stability.cli.main import main as cli_main
from marl_stability.cli.tools import TOOLS


@pytest.mark.parametrize("tool", sorted(TOOLS))
@pytest.mark.parametrize("how", ["module", "subcommand"])
def test_unknown_option_is_one_error_line(tool: str, how: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Both spellings: ``python -m <module> ARGS`` (the tool's main) and ``marl-stability <tool> ARGS``."""
    with pytest.raises(SystemExit) as e:
        if how == "module":
            importlib.import_module(TOOLS[tool][0]).main(["--no-such-option"])
        else:
            cli_main([tool, "--no-such-option"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.count("\n") == 1 and err.startswith("error: "), err
    # argparse names the missing positional arguments first, else the unknown option
    assert "--no-such-option" in err or "the following arguments are required" in err, err


def test_every_tool_is_a_subcommand_with_its_own_help(capsys: pytest.CaptureFixture[str]) -> None:
    """``marl-stability --help`` lists every tool; ``marl-stability <tool> --help`` is the tool's own help."""
    cli_main(["--help"])
    listing = capsys.readouterr().out
    assert all(f" {name} " in listing for name in TOOLS)
    tool_modules = {m for m, _ in TOOLS.values()}
    runnable = {f"marl_stability.{p.parent.name}.{p.stem}" for p in
                __import__("pathlib").Path(importlib.import_module("marl_stability").__file__).parent.glob("*/*.py")
                if "def main(" in p.read_text() and p.parent.name in ("analysis", "studies", "bench")}
    assert runnable <= tool_modules  # a new tool with a main() must become a subcommand
    with pytest.raises(SystemExit) as e:
        cli_main(["mechanism", "--help"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("usage: python -m marl_stability.analysis.mechanism")


def test_help_is_unchanged(capsys: pytest.CaptureFixture[str]) -> None:
    from marl_stability.analysis import mechanism

    with pytest.raises(SystemExit) as e:
        mechanism.main(["--help"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("usage: python -m marl_stability.analysis.mechanism")


@pytest.mark.parametrize("how", ["subcommand", "module"])
def test_double_dash_makes_every_later_word_positional(how: str, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """After ``--`` argparse reads ``--out`` as a folder name; the subcommand passes the ``--`` through as given
    (click alone drops it, so the subcommand would have read --out as an option)."""
    args = ["--", "--out", str(tmp_path / "table.md"), str(tmp_path)]
    with pytest.raises(SystemExit) as exc:
        if how == "subcommand":
            cli_main(["mechanism", *args])
        else:
            importlib.import_module(TOOLS["mechanism"][0]).main(args)
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --out does not exist"
    assert not (tmp_path / "table.md").exists()
