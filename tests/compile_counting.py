"""Counting XLA compilations, to test that a program is compiled once and reused."""

import contextlib

import jax

# What jax records for every compilation it asks XLA for (a persistent-cache
# hit included), with the jitted function's name.
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def count_compilations():
    """Yields the list of the names of the functions compiled inside the block."""
    names = []

    def listener(event, duration, **kwargs):
        del duration
        if event == BACKEND_COMPILE_EVENT:
            names.append(kwargs.get("fun_name", "?"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
