import atexit
import os
import pathlib
import shutil
import tempfile

import pytest

DATA_DIR = pathlib.Path(__file__).parent / "data"

# libtpu (requirements-dev) serves the deviceless TPU compiles of the tests.
# With no TPU it must not ask a metadata server for one, and the test
# processes that load it side by side (a train.py child, the aot tool) must
# not lock each other out: a deviceless compile holds no chip.
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

# One persistent compilation cache per test session, shared with the train.py
# subprocesses the tests start: the training tests build the same programs
# several times (a resumed run, a second train.py process) and compile each once.
# Set before any test module imports jax; an existing setting is kept.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache_dir = tempfile.mkdtemp(prefix="sasmamba-jax-test-compilation-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
    return DATA_DIR
