"""Everything that watches a run: the built-in hooks (measurement and output in :mod:`.builtin`, control in
:mod:`.control`, the online detectors in :mod:`.detectors`), :mod:`.monitor` for a user's own training loop, and
:mod:`.assemble`, which builds a run's hooks from config.

The hook interface itself (:class:`Hook`, :class:`RunContext`, ...) lives one layer down, in
:mod:`marl_stability.core.hooks`, because algorithms and the loop's parts emit events to it; it is re-exported
here, the documented place to import it from: ``from marl_stability.hooks import Hook, RunContext``.
"""

from marl_stability.core.hooks import (
                                       EVENTS,
                                       Hook,
                                       HookBus,
                                       NullBus,
                                       RunContext,
                                       ScopedLog,
                                       TagOwnershipError,
                                       check_claims,
)

__all__ = ["EVENTS", "Hook", "HookBus", "NullBus", "RunContext", "ScopedLog", "TagOwnershipError", "check_claims"]
