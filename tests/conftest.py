import os
import pathlib
import subprocess
import sys
import time

import fast_compile
import pytest

DATA_DIR = pathlib.Path(__file__).parent / "data"
# A few test runs' compiles (one run of the suite writes about 200 MB).
CACHE_MAX_BYTES = 2 * 2**30
# Shorter compiles are compiled again rather than cached (pytest_configure says why).
CACHE_MIN_COMPILE_TIME_S = 0.5

# The tests run on the CPU (fake CPU devices for the multi-device ones). With
# the CUDA plugin installed for the deviceless GPU compiles, a process that
# starts its backends without this prints the plugin's failed cuInit and
# falls back; compile-only TPU and GPU devices do not need it unset. Test
# subprocesses (train.py, eval.py, the tools) inherit it.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# libtpu (requirements-dev) serves the deviceless TPU compiles of the tests.
# With no TPU it must not ask a metadata server for one, and the test
# processes that load it side by side (a train.py child, the aot tool) must
# not lock each other out: a deviceless compile holds no chip.
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

fast_compile.install()


def pytest_configure(config: pytest.Config) -> None:
    """One persistent compilation cache for every run of the suite, subprocesses included.

    It lives in pytest's cache folder (``.pytest_cache``; ``--cache-clear``
    empties it), so a second run loads what the first compiled instead of
    compiling it again, and within a run a resumed training or a second
    train.py process compiles nothing twice. Only compiles of at least
    CACHE_MIN_COMPILE_TIME_S are kept: a run is thousands of small compiles,
    and writing every one of them, under the lock below, took longer than
    compiling them again (docs/performance.md, "The test suite"). Set here,
    before any test module imports jax; settings from the environment are kept.

    A size limit also makes jax lock the folder for every read and write:
    without one it writes entries in place, unlocked, and a process that
    reads an entry while another writes it reads a truncated executable.
    The tests' processes (xdist workers, train.py children, process pairs)
    share the folder at the same time.
    """
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        pytest_cache = getattr(config, "cache", None)
        if pytest_cache is None:  # run with -p no:cacheprovider: no compilation cache either
            return
        os.environ["JAX_COMPILATION_CACHE_DIR"] = str(pytest_cache.mkdir("jax-compilation-cache"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", str(CACHE_MIN_COMPILE_TIME_S))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(CACHE_MAX_BYTES))


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
    return DATA_DIR


# The README's promise for the bundled demo: `python train.py` on this 2-core CPU.
DEMO_LIMIT_S = 600


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> dict:
    """``python train.py`` with no flags, as a user runs it: its workdir, exit, output and wall time.

    Trained once per test session and shared by the slow tests marked
    ``alone`` (the demo's own checks, streaming accuracy on the demo model),
    which run one at a time with nothing beside them, so the time is the
    user's. The run compiles as a user's does, without the suite's compile flags.
    """
    repo = pathlib.Path(__file__).parent.parent
    workdir = tmp_path_factory.mktemp("demo_run") / "demo"
    env = fast_compile.without_flags({**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(repo)})
    started = time.time()
    result = subprocess.run(
        [sys.executable, str(repo / "train.py"), f"--workdir={workdir}"],
        env=env,
        cwd=workdir.parent,
        capture_output=True,
        text=True,
        timeout=DEMO_LIMIT_S,
    )
    return {"workdir": workdir, "result": result, "elapsed_s": time.time() - started}
