"""Config flags, flag parsing and the input-error path every command line shares: one line, exit status 2."""

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence

from absl import flags
from ml_collections import config_flags

from sasmamba_jax import configs

# The config flags defined in this process, whose values parse_flags resolves by name.
_CONFIG_FLAGS: list[str] = []


def config_file(name_or_path: str) -> str:
    """A config's file: a bundled config's name (``h36m_243``, in ``sasmamba_jax.configs``) or a path.

    Names work from any folder, with the package installed or not; a path
    (anything with a ``/`` or ending in ``.py``) is taken as given.
    """
    if "/" in name_or_path or name_or_path.endswith(".py") or os.path.exists(name_or_path):
        return name_or_path
    path = os.path.join(os.path.dirname(configs.__file__), f"{name_or_path}.py")
    if not os.path.isfile(path):
        bundled = sorted(
            file[: -len(".py")]
            for file in os.listdir(os.path.dirname(configs.__file__))
            if file.endswith(".py") and not file.startswith("_") and file != "common.py"
        )
        _exit(
            f"{_program()}: error: unknown config {name_or_path!r}; bundled: {', '.join(bundled)}, or a file"
        )
    return path


def _with_config_files(argv: Sequence[str], name: str) -> list[str]:
    """``argv`` with the value of ``--NAME=VALUE`` / ``--NAME VALUE`` made a file by ``config_file``."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            argv[i] = f"--{name}={config_file(arg.partition('=')[2])}"
        elif arg == f"--{name}" and i + 1 < len(argv):
            argv[i + 1] = config_file(argv[i + 1])
    return argv


def define_config_file(name: str, default: str | None, help_string: str):
    """``config_flags.DEFINE_config_file`` taking a bundled config's name too; unknown keys end in one line.

    ``default`` is a name or a path, like the flag's value (``config_file``).

    ml_collections applies the ``--config.*`` overrides when it loads a config
    file: at definition for the default file, while parsing for one given
    with ``--config=``. An override naming a key the config lacks
    (``--config.optimizer.learnig_rate=1``) raises AttributeError or KeyError
    there, which would end the program in a traceback.
    """
    _CONFIG_FLAGS.append(name)
    try:
        return config_flags.DEFINE_config_file(name, default and config_file(default), help_string)
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
    for name in _CONFIG_FLAGS:
        argv = _with_config_files(argv, name)
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
