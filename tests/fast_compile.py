"""XLA flags that make the test processes compile for the CPU about twice as fast.

A test run is hundreds of compiles of small programs that then run a step or
two: compiling, not running, is where its time goes. XLA's CPU back end at
LLVM optimisation level 1, with the classic elemental emitters instead of the
newer fusion emitters, compiled the tiny model's gradient in 4.4 s instead of
9.1 s and ran it in 543 ms instead of 302 ms, and the default test run took
365 s instead of 525 s (docs/performance.md, "The test suite"). Neither flag
changes what is computed: XLA's CPU code keeps IEEE float semantics at every
level (no fast math), and every test passes with and without them.

conftest.py adds them to ``XLA_FLAGS`` for the session, and test subprocesses
inherit them; a test that times what users get (the demo's training run)
takes them out again.
"""

import os

FLAGS = ("--xla_backend_optimization_level=1", "--xla_cpu_use_fusion_emitters=false")


def with_flags(xla_flags: str) -> str:
    """``xla_flags`` (an ``XLA_FLAGS`` value) with the fast-compile flags added."""
    return " ".join([*FLAGS, *(flag for flag in xla_flags.split() if flag not in FLAGS)])


def without_flags(environment: dict[str, str]) -> dict[str, str]:
    """A copy of a process environment whose ``XLA_FLAGS`` are the user's own."""
    user_flags = [flag for flag in environment.get("XLA_FLAGS", "").split() if flag not in FLAGS]
    environment = dict(environment)
    if user_flags:
        environment["XLA_FLAGS"] = " ".join(user_flags)
    else:
        environment.pop("XLA_FLAGS", None)
    return environment


def install() -> None:
    """Adds the flags to this process's ``XLA_FLAGS``, before jax starts a back end."""
    os.environ["XLA_FLAGS"] = with_flags(os.environ.get("XLA_FLAGS", ""))
