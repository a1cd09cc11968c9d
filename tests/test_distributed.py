import jax
import pytest

from sasmamba_jax import distributed

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
