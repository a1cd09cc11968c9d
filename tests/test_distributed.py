import warnings

import jax
import pytest

from sasmamba_jax.parallel import distributed

ENVIRONMENT = ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES")


@pytest.fixture
def calls(monkeypatch):
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    recorded = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: recorded.append(kwargs))
    return recorded


def test_a_plain_run_stays_single_process(calls):
    distributed.initialize()
    assert calls == []


def test_flags_are_passed_through(calls):
    distributed.initialize("10.0.0.1:1234", 2, 1)
    assert calls == [dict(coordinator_address="10.0.0.1:1234", num_processes=2, process_id=1)]


@pytest.mark.parametrize(
    "name, value, joins",
    [
        ("SLURM_JOB_ID", "42", True),
        ("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234", True),
        ("TPU_WORKER_HOSTNAMES", "t1k-0,t1k-1", True),
        ("TPU_WORKER_HOSTNAMES", "localhost", False),
    ],
)
def test_launchers_are_detected(calls, monkeypatch, name, value, joins):
    monkeypatch.setenv(name, value)
    distributed.initialize()
    assert calls == ([{}] if joins else [])


@pytest.fixture
def cache_settings():
    """A persistent compilation cache configured, and the session's settings put back after."""
    names = ("jax_compilation_cache_dir", "jax_enable_compilation_cache")
    saved = {name: getattr(jax.config, name) for name in names}
    jax.config.update("jax_compilation_cache_dir", "/shared/jax-cache")
    jax.config.update("jax_enable_compilation_cache", True)
    yield
    for name, value in saved.items():
        jax.config.update(name, value)


@pytest.mark.parametrize("backend, processes", [("cpu", 2), ("cpu", 1), ("gpu", 2)])
def test_only_a_multi_process_cpu_run_turns_the_compilation_cache_off(
    calls, cache_settings, monkeypatch, backend, processes
):
    """On CPUs only process 0 would hit the cache (docs/guide.md): tests/test_multihost.py resumes a run."""
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    monkeypatch.setattr(jax, "process_count", lambda: processes)
    turned_off = backend == "cpu" and processes > 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        distributed.initialize("10.0.0.1:1234", 2, 1)
    assert jax.config.jax_enable_compilation_cache is not turned_off
    said = [str(w.message) for w in caught if "persistent compilation cache off" in str(w.message)]
    assert len(said) == int(turned_off)
