"""User-facing errors: anything raised as ``UserError`` is printed as one ``error: ...`` line, exit 2."""


class UserError(Exception):
    """Bad input from the user (config, CLI arguments, files). Never a bug in our code."""
