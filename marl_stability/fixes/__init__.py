"""The stability fixes: :mod:`.registry` declares each fix once (no torch: config, doctor and the docs read it);
:mod:`.objects` holds the objects built once from config that act at their own point of a run (gradient
measurement and clipping, observation and reward transforms)."""
