"""Float32 matmul precision: the names a program may run with, and a context that sets one.

The platform default is one bfloat16 pass on TPU and TF32 on Ampere and newer
NVIDIA GPUs; comparisons with the PyTorch release need full float32.
"""

import contextlib
from collections.abc import Iterator

import jax

# The names ``jax.default_matmul_precision`` takes for float32 matmuls.
# "default" is the platform's own: one bfloat16 pass on TPU, TF32 on Ampere
# and newer NVIDIA GPUs, float32 on CPU. "high" is three bfloat16 passes on
# TPU (TF32 on GPU), "highest" full float32 everywhere.
MATMUL_PRECISIONS = ("default", "high", "highest", "bfloat16", "tensorfloat32", "float32")

# What a comparison with the PyTorch release runs with: float32, as the release computes.
PARITY_MATMUL_PRECISION = "highest"


def check_matmul_precision(name: str) -> str:
    """``name`` if it is one of ``MATMUL_PRECISIONS``; a one-line ValueError otherwise."""
    if name not in MATMUL_PRECISIONS:
        raise ValueError(f"unknown matmul precision {name!r}; expected one of {MATMUL_PRECISIONS}")
    return name


@contextlib.contextmanager
def use_matmul_precision(name: str | None) -> Iterator[None]:
    """The float32 matmul precision of every program traced in the block; None keeps the caller's.

    Thread-local, as jax's setting is: a thread that traces must enter it itself.
    """
    if name is None:
        yield
        return
    with jax.default_matmul_precision(check_matmul_precision(name)):
        yield
