"""What every command line shares: flag parsing, ``--help`` and one error path.

The tools: train, eval and aot (absl flags, ``--config`` an ml_collections
config file), infer, export and convert (argparse). Each has ``main``, wrapped
by ``command``, and ``run``, its console script.

Errors. A bad flag, a bad input file (ValueError, OSError; CheckpointError is
a ValueError) or a missing package (ImportError, e.g. torch for a release
``.pth``) ends every tool the same way: one line on stderr,

    <tool>: error: <what went wrong>

and exit status 2 (``main`` returns 2; an absl flag error exits with it).
Warnings are one line each too: ``<tool>: warning: <message>``. Other exit
statuses are the tool's own: 1 for convert's failed ``--check``, aot's "does
not fit" and train's non-finite loss.

``<tool>`` is the command as the user typed it: ``train.py`` and ``eval.py``
(the scripts at the top of the repository), ``sasmamba_jax.infer``,
``sasmamba_jax.export``, ``sasmamba_jax.convert`` and ``sasmamba_jax.aot``
(``python -m``), or the console script's own name (``sasmamba-infer``, ...).
A ``main`` called from Python (tests) uses the first two kinds of name.

Help. ``--help`` (or ``-h``) prints the tool's usage, its cli module's
docstring, and its flags, and exits 0.

Start-up. train and eval import the library (jax, flax, orbax: about 3 s)
inside ``main``, once their flags have parsed and their config has loaded,
so that ``--help``, a bad flag, a config file that fails to load and an
unknown config key answer in a fraction of a second.
"""

import argparse
import functools
import os
import sys
import textwrap
import warnings
from collections.abc import Callable, Sequence

from absl import app, flags
from ml_collections import config_flags

from sasmamba_jax import configs

# The config flags defined in this process, whose values parse_flags resolves by name.
_CONFIG_FLAGS: list[str] = []

# Each tool's name when started with ``python train.py`` / ``python -m ...`` or called from Python.
LAUNCHERS = {
    "train": "train.py",
    "eval": "eval.py",
    "aot": "sasmamba_jax.aot",
    "infer": "sasmamba_jax.infer",
    "export": "sasmamba_jax.export",
    "convert": "sasmamba_jax.convert",
}

# The tool running in this process: set by ``command`` and ``run_absl``.
_tool: str | None = None
# The cli module whose docstring and flags an absl tool's ``--help`` shows.
_help_module: str | None = None

HELP_ARGUMENTS = ("--help", "-h", "--helpshort", "-?")


def name(tool: str | None = None) -> str:
    """The name errors start with: ``tool`` (default: the one running) as the user started it."""
    tool = tool or _tool
    started = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if tool is None:
        return started or "sasmamba_jax"
    if started == f"sasmamba-{tool}":
        return started
    return LAUNCHERS[tool]


def usage_name(tool: str) -> str:
    """How to start ``tool`` in a usage line: ``python -m sasmamba_jax.infer``, ``python train.py``."""
    started = name(tool)
    if started.startswith("sasmamba_jax."):
        return f"python -m {started}"
    if started.endswith(".py"):
        return f"python {started}"
    return started


def fail(message: str, tool: str | None = None):
    """Ends the program: ``<tool>: error: <message>`` on one line of stderr, exit status 2."""
    print(error_line(message, tool), file=sys.stderr)
    sys.exit(2)


def error_line(message: object, tool: str | None = None) -> str:
    """``<tool>: error: <message>``, the message's lines and runs of spaces joined into one line."""
    return f"{name(tool)}: error: {' '.join(str(message).split())}"


def _print_warning(message, category, filename, lineno, file=None, line=None):
    print(f"{name()}: warning: {' '.join(str(message).split())}", file=sys.stderr)


def config_file(name_or_path: str) -> str:
    """A config's file: a bundled config's name (``h36m_243``, in ``sasmamba_jax.configs``) or a path.

    Names work from any folder, with the package installed or not; a path
    (anything with a ``/``, ending in ``.py``, or a file) is taken as given.
    A folder is not a config: a workdir named ``demo`` in the current folder
    (``python train.py --workdir=demo``, run again to resume) leaves the
    bundled ``demo`` the default.
    """
    if "/" in name_or_path or name_or_path.endswith(".py") or os.path.isfile(name_or_path):
        return name_or_path
    path = os.path.join(os.path.dirname(configs.__file__), f"{name_or_path}.py")
    if not os.path.isfile(path):
        bundled = sorted(
            file[: -len(".py")]
            for file in os.listdir(os.path.dirname(configs.__file__))
            if file.endswith(".py") and not file.startswith("_") and file != "common.py"
        )
        fail(f"unknown config {name_or_path!r}; bundled: {', '.join(bundled)}, or a file")
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
    global _tool
    # The defining cli module (``sasmamba_jax.cli.train``): its tool names the errors from here on,
    # and its --help lists the flag.
    module = sys._getframe(1).f_globals["__name__"]
    if _tool is None and module.rpartition(".")[2] in LAUNCHERS:
        _tool = module.rpartition(".")[2]
    _CONFIG_FLAGS.append(name)
    try:
        holder = config_flags.DEFINE_config_file(name, default and config_file(default), help_string)
    except (AttributeError, KeyError) as e:
        fail(_unknown_key_message(e, sys.argv))
    flags.FLAGS.register_key_flag_for_module(module, flags.FLAGS[name])
    return holder


def config_value(config_flag: flags.FlagHolder):
    """The parsed config; a config file that failed to load is a one-line error.

    For such a file ml_collections hands back a stand-in that raises OSError
    on first use, which is here rather than deep inside training.
    """
    config = config_flag.value
    try:
        config.keys()
    except OSError as e:
        fail(str(e))
    return config


def parse_flags(argv: Sequence[str]) -> list[str]:
    """absl flag parsing (``app.run(..., flags_parser=parse_flags)``): one-line errors, ``--help``."""
    arguments = list(argv[1:])
    if "--" in arguments:
        arguments = arguments[: arguments.index("--")]
    if _help_module is not None and any(arg in HELP_ARGUMENTS for arg in arguments):
        print(help_text(_help_module))
        sys.exit(0)
    for flag_name in _CONFIG_FLAGS:
        argv = _with_config_files(argv, flag_name)
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(str(e))
    except (AttributeError, KeyError) as e:
        fail(_unknown_key_message(e, argv))


def help_text(module: str) -> str:
    """An absl tool's ``--help``: its cli module's docstring and the flags that module defines."""
    doc = (sys.modules[module].__doc__ or "").rstrip()
    text = f"{doc}\n\nflags:\n{flags.FLAGS.module_help(module)}"
    if _CONFIG_FLAGS:
        note = (
            f"--{_CONFIG_FLAGS[0]}.KEY=VALUE overrides a key of the config, e.g. "
            f"--{_CONFIG_FLAGS[0]}.model.scan=sequential. --helpfull adds absl's own flags (logging)."
        )
        text += "\n\n" + textwrap.fill(note, width=80)
    return text


def run_absl(main: Callable[[list[str]], int]) -> None:
    """Runs an absl tool's ``main`` (wrapped by ``command``) as its command line."""
    global _tool, _help_module
    _tool, _help_module = main.tool, main.__module__
    app.run(main, flags_parser=parse_flags)


# What a user's input causes: missing, unreadable or ill-formed data files,
# checkpoints that are corrupt or do not fit the config (CheckpointError is a
# ValueError), a missing optional package.
INPUT_ERRORS = (ValueError, OSError, ImportError)


class UsageError(ValueError):
    """A bad command line found by argparse."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse for a tool: its usage name, and flag errors that end in ``command``'s one line."""

    def __init__(self, tool: str, **kwargs):
        # No abbreviations: a renamed flag (--no-flip, now --no-flip-tta) must fail, not match a prefix.
        super().__init__(prog=usage_name(tool), allow_abbrev=False, **kwargs)

    def error(self, message: str):
        raise UsageError(message)


def command(tool: str) -> Callable:
    """Decorates a tool's ``main``: ``INPUT_ERRORS`` become one line and status 2, warnings one line each.

    The one error path of every tool (see the module's docstring).
    """

    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapped(*args, **kwargs) -> int:
            global _tool
            outer, _tool = _tool, tool
            try:
                with warnings.catch_warnings():
                    warnings.showwarning = _print_warning
                    return main(*args, **kwargs)
            except INPUT_ERRORS as e:
                print(error_line(e, tool), file=sys.stderr)
                return 2
            finally:
                _tool = outer

        wrapped.tool = tool
        return wrapped

    return decorate


def _unknown_key_message(error: Exception, argv: Sequence[str]) -> str:
    """Names the key, the override that used it and ml_collections' suggestion."""
    message = error
    while isinstance(message, BaseException):
        message = message.args[0] if message.args else str(message)
    key, _, suggestion = str(message).partition("\n")
    key = key.strip("\"'")
    overrides = [arg.split("=")[0] for arg in argv[1:] if arg.startswith("--") and "." in arg and key in arg]
    where = f" in {overrides[0]}" if overrides else ""
    return f"unknown config key {key!r}{where}. {suggestion}"
