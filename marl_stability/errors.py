"""User-facing errors: anything raised as ``UserError`` is printed as one ``error: ...`` line, exit 2."""

from __future__ import annotations

import argparse
from typing import NoReturn


class UserError(Exception):
    """Bad input from the user (config, CLI arguments, files). Never a bug in our code."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the ``python -m marl_stability.<tool>`` scripts: a bad argument is one line ``error: ...`` on
    stderr and exit code 2, like every other bad input (argparse itself prints its usage first); ``--help`` is
    unchanged."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see --help)\n")
