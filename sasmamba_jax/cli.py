"""Flag and input-error handling shared by ``train.py`` and ``eval.py``: one line and exit status 2."""

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence

from absl import flags
from ml_collections import config_flags


def define_config_file(name: str, default: str, help_string: str):
    """``config_flags.DEFINE_config_file``, with an unknown ``--NAME.*`` key a one-line error.

    ml_collections applies the ``--config.*`` overrides when it loads a config
    file: at definition for the default file, while parsing for one given
    with ``--config=``. An override naming a key the config lacks
    (``--config.optimizer.learnig_rate=1``) raises AttributeError or KeyError
    there, which would end the program in a traceback.
    """
    try:
        return config_flags.DEFINE_config_file(name, default, help_string)
    except (AttributeError, KeyError) as e:
        _exit(_unknown_key_message(e, sys.argv))


def config_value(config_flag: flags.FlagHolder):
    """The parsed config; a config file that failed to load is a one-line error.

    For such a file ml_collections hands back a stand-in that raises OSError
    on first use, which is here rather than deep inside training.
    """
    config = config_flag.value
    try:
        config.keys()
    except OSError as e:
        _exit(f"{_program()}: error: {e}")
    return config


def parse_flags(argv: Sequence[str]) -> list[str]:
    """absl's flag parsing (``app.run(..., flags_parser=parse_flags)``) with one-line errors."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _exit(f"{_program()}: error: {e}")
    except (AttributeError, KeyError) as e:
        _exit(_unknown_key_message(e, argv))


# What a user's input causes: missing, unreadable or ill-formed data files,
# checkpoints that are corrupt or do not fit the config (CheckpointError is a
# ValueError), a missing optional package.
INPUT_ERRORS = (ValueError, OSError, ImportError)


@contextlib.contextmanager
def input_errors_end_the_program() -> Iterator[None]:
    """Turns an ``INPUT_ERRORS`` exception of the block into one line on stderr and exit status 2."""
    try:
        yield
    except INPUT_ERRORS as e:
        _exit(f"{_program()}: error: {e}")


def _unknown_key_message(error: Exception, argv: Sequence[str]) -> str:
    """Names the key, the override that used it and ml_collections' suggestion."""
    message = error
    while isinstance(message, BaseException):
        message = message.args[0] if message.args else str(message)
    key, _, suggestion = str(message).partition("\n")
    key = key.strip("\"'")
    overrides = [arg.split("=")[0] for arg in argv[1:] if arg.startswith("--") and "." in arg and key in arg]
    where = f" in {overrides[0]}" if overrides else ""
    return f"{_program()}: error: unknown config key {key!r}{where}. {suggestion}"


def _program() -> str:
    return os.path.basename(sys.argv[0])


def _exit(message: str):
    print(" ".join(message.split()), file=sys.stderr)
    sys.exit(2)
