"""What every reader of a checkpoint raises, and the checks that raise it."""

from typing import Any

import jax


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


def check_shapes(restored: Any, target: Any, what: str) -> None:
    """Raises CheckpointError naming every array of ``restored`` whose shape differs from ``target``'s.

    Orbax restores an array with the shape it was saved with, whatever shape
    the target asks for (unless the target is sharded), and nnx takes it.
    """
    mismatched = [
        f"{jax.tree_util.keystr(path)}: saved {tuple(saved.shape)}, model {tuple(wanted.shape)}"
        for (path, saved), wanted in zip(
            jax.tree_util.tree_leaves_with_path(restored), jax.tree.leaves(target), strict=True
        )
        if tuple(saved.shape) != tuple(wanted.shape)
    ]
    if mismatched:
        raise CheckpointError(f"{what} do not fit the model config: {'; '.join(mismatched)}")


def first_line(error: BaseException) -> str:
    """An exception's message reduced to its first line (its type where it has none)."""
    message = str(error).strip()
    return message.splitlines()[0] if message else type(error).__name__
