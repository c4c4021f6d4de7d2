"""marl-stability: reproduce, instrument and fix the repeated-action failure of multi-agent actor-critics."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

# The one place the version is written (pyproject reads it). Semver for the public surface: docs/reliability.md "Public
# surface and versioning"; every change to it is in CHANGELOG.md.
__version__ = "0.2.0"

# The environments and the algorithms live in the repository's top-level envs/ and agents/ folders (the project's
# fixed layout) but are the subpackages marl_stability.envs and marl_stability.agents: a wheel maps them into this
# package (pyproject's package-dir), so installing marl-stability adds no generic top-level `envs` or `agents`
# package that would shadow, or be shadowed by, a user's own. In a source checkout (editable install, or this
# folder's parent on PYTHONPATH, as tools that measure another checkout do) the finder below resolves the two
# names to the folders beside this package -- of this checkout, whichever else is on the path.
_SOURCE_ROOT = Path(__file__).resolve().parent.parent
_MAPPED = ("envs", "agents")


class _SourceCheckoutFinder(importlib.abc.MetaPathFinder):
    """``marl_stability.envs`` -> ``<checkout>/envs`` (and agents); submodules then resolve through __path__."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        prefix, _, name = fullname.rpartition(".")
        if prefix != __name__ or name not in _MAPPED:
            return None
        init = _SOURCE_ROOT / name / "__init__.py"
        return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[str(init.parent)])


if not (Path(__file__).resolve().parent / "envs").is_dir() and all(
        (_SOURCE_ROOT / name / "__init__.py").is_file() for name in _MAPPED) and not any(
        type(f).__name__ == "_SourceCheckoutFinder" for f in sys.meta_path):  # once, also under importlib.reload
    sys.meta_path.insert(0, _SourceCheckoutFinder())
