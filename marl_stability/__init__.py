"""marl-stability: reproduce, instrument and fix the repeated-action failure of multi-agent actor-critics."""

# The one place the version is written (pyproject reads it). Semver for the public surface: README "Public
# surface and versioning"; every change to it is in CHANGELOG.md.
__version__ = "0.2.0"
