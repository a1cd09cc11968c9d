"""What every command line shares (``cli.program``): ``--help``, the error line, flag names.

Every tool ends a bad flag, a bad input file or a missing package in one line,
``<tool>: error: ...``, and exit status 2. The argparse tools are run in
process; each tool also has a test of the real command (here, or in
test_input_errors.py, test_eval_cli.py, test_aot.py, test_convert.py).
"""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from test_quiet_start import SUITE_SETTINGS, noise_lines

from sasmamba_jax import host_platform
from sasmamba_jax.cli import convert, export, infer, program

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
TIMEOUT_S = 300
ARGPARSE_TOOLS = {"infer": infer, "export": export, "convert": convert}
NEEDS_TORCH = "reading or writing PyTorch checkpoints needs torch: pip install 'sasmamba-jax[torch]'"


def _run(*arguments):
    command = [sys.executable, *arguments]
    return subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=TIMEOUT_S)


def _assert_one_line(error: str, tool: str, *expected: str) -> None:
    assert "Traceback" not in error
    lines = error.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{tool}: error: "), error[-3000:]
    for text in expected:
        assert text in lines[0]


# ---------------------------------------------------------------------------
# --help


@pytest.mark.parametrize(
    "command, flags, usage",
    [
        (["train.py"], ["--workdir"], "--workdir=DIR \\\n        --config.data.pkl_path="),
        (["eval.py"], ["--checkpoint", "--output"], "--config=configs/h36m_243.py \\\n        --config.data"),
        (["-m", "sasmamba_jax.aot"], ["--topology", "--mode"], "--topology=v5e:1x1\n    python -m"),
    ],
    ids=["train", "eval", "aot"],
)
def test_absl_tools_help_lists_config_and_their_flags(command, flags, usage):
    # As a user starts it: without the suite's JAX_PLATFORMS and libtpu settings.
    env = {key: value for key, value in ENV.items() if key not in SUITE_SETTINGS}
    result = subprocess.run(
        [sys.executable, *command, "--help"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    if not host_platform.has_accelerator():
        # Nothing from libtpu or the CUDA plugin (sasmamba_jax.host_platform).
        assert not noise_lines(result.stderr), result.stderr
    for flag in ["--config", *flags]:
        assert f"  {flag}:" in result.stdout, result.stdout
    # The usage lines of the cli module's docstring, each on its own line.
    assert usage in result.stdout
    assert "--config.KEY=VALUE" in result.stdout


@pytest.mark.parametrize("tool", sorted(ARGPARSE_TOOLS))
def test_argparse_tools_help_exits_0(tool, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ARGPARSE_TOOLS[tool].main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m sasmamba_jax.{tool} ")
    assert "--overwrite" in out if tool == "convert" else "--checkpoint CHECKPOINT" in out


def test_infer_and_export_spell_flip_tta_alike_with_their_own_defaults(capsys):
    for tool in ("infer", "export"):
        with pytest.raises(SystemExit):
            ARGPARSE_TOOLS[tool].main(["--help"])
        assert "--flip-tta, --no-flip-tta" in capsys.readouterr().out
    assert infer._parse_args(["--checkpoint", "c", "--input", "i", "--output", "o"]).flip_tta is True
    assert (
        infer._parse_args(["--checkpoint", "c", "--input", "i", "--output", "o", "--no-flip-tta"]).flip_tta
        is False
    )
    assert export._parse_args(["--checkpoint", "c", "o"]).flip_tta is False
    assert export._parse_args(["--checkpoint", "c", "--flip-tta", "o"]).flip_tta is True


# ---------------------------------------------------------------------------
# The error line


@pytest.mark.parametrize("tool", sorted(ARGPARSE_TOOLS))
def test_argparse_tools_bad_flags_are_one_line_with_status_2(tool, capsys):
    assert ARGPARSE_TOOLS[tool].main(["--no-such-flag"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    _assert_one_line(captured.err, f"sasmamba_jax.{tool}")


def test_a_folder_named_like_a_bundled_config_does_not_hide_it(tmp_path, monkeypatch):
    """``python train.py --workdir=demo``, run again from the same folder, still trains the bundled demo."""
    (tmp_path / "demo").mkdir()
    monkeypatch.chdir(tmp_path)
    bundled = program.config_file("demo")
    assert os.path.isfile(bundled) and bundled.endswith(os.path.join("configs", "demo.py")), bundled
    (tmp_path / "mine").write_text("")
    assert program.config_file("mine") == "mine"


@pytest.mark.parametrize("tool", sorted(program.LAUNCHERS))
def test_the_name_is_the_command_the_user_typed(tool, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/usr/bin/pytest"])
    assert program.name(tool) == program.LAUNCHERS[tool]
    monkeypatch.setattr(sys, "argv", [f"/venv/bin/sasmamba-{tool}"])
    assert program.name(tool) == f"sasmamba-{tool}"
    assert program.usage_name(tool) == f"sasmamba-{tool}"


def test_errors_and_warnings_of_a_main_are_one_line_each(capsys):
    def main():
        warnings.warn("first\n  second", stacklevel=1)
        raise OSError("cannot\nread it")

    assert program.command("infer")(main)() == 2
    err = capsys.readouterr().err
    assert err == "sasmamba_jax.infer: warning: first second\nsasmamba_jax.infer: error: cannot read it\n"


def test_other_exceptions_are_not_hidden():
    def main():
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        program.command("train")(main)()


@pytest.fixture
def keypoints_file(tmp_path):
    path = tmp_path / "keypoints.npy"
    np.save(path, np.zeros((27, 17, 2), np.float32))
    return path


@pytest.mark.parametrize("tool", sorted(ARGPARSE_TOOLS))
def test_a_pth_without_torch_is_one_line(tool, tmp_path, data_dir, keypoints_file, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    pth = str(data_dir / "official_tiny.pth")
    arguments = {
        "infer": ["--checkpoint", pth, "--input", str(keypoints_file), "--format", "h36m"],
        "export": ["--checkpoint", pth, str(tmp_path / "out.jax")],
        "convert": [pth, str(tmp_path / "out")],
    }[tool]
    if tool == "infer":
        arguments += ["--output", str(tmp_path / "out.npz")]
    assert ARGPARSE_TOOLS[tool].main(arguments) == 2
    _assert_one_line(capsys.readouterr().err, f"sasmamba_jax.{tool}", NEEDS_TORCH)
    assert sorted(os.listdir(tmp_path)) == ["keypoints.npy"]


def test_python_m_infer_without_torch_is_one_line(tmp_path, data_dir, keypoints_file):
    """``python -m sasmamba_jax.infer`` in a Python that cannot import torch."""
    arguments = [
        "--checkpoint",
        str(data_dir / "official_tiny.pth"),
        "--input",
        str(keypoints_file),
        "--format",
        "h36m",
        "--output",
        str(tmp_path / "out.npz"),
    ]
    code = (
        "import runpy, sys\n"
        "sys.modules['torch'] = None\n"
        f"sys.argv = ['-m', *{arguments!r}]\n"
        "runpy.run_module('sasmamba_jax.infer', run_name='__main__', alter_sys=True)\n"
    )
    result = _run("-c", code)
    assert result.returncode == 2, result.stderr[-3000:]
    _assert_one_line(result.stderr, "sasmamba_jax.infer", NEEDS_TORCH)
    assert not (tmp_path / "out.npz").exists()


def test_python_m_export_bad_flag_is_one_line(tmp_path):
    result = _run(
        "-m", "sasmamba_jax.export", "--checkpoint", "x", "--frames", "many", str(tmp_path / "o.jax")
    )
    assert result.returncode == 2
    _assert_one_line(result.stderr, "sasmamba_jax.export", "argument --frames: invalid int value: 'many'")
