"""marl-stability: reproduce, instrument and fix the repeated-action failure of multi-agent actor-critics."""

__version__ = "0.1.0"
