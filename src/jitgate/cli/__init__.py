"""The ``jitgate`` command."""
