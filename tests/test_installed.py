"""The package built and installed (not editable) into an environment of its own, run from an empty folder.

What a user of ``pip install .`` gets: the console scripts of pyproject's
``[project.scripts]`` and the ``python -m sasmamba_jax.<tool>`` entry points,
the bundled configs as ``sasmamba_jax.configs`` (no top-level ``configs``), the
GPU target files; nothing read from the repository.

The new environment reads its dependencies (jax, libtpu, ...) from this one's
site-packages, named in a ``.pth`` file as a plain folder. Its ``.pth`` files
are then not run, so this environment's editable install of the package (a
finder set up by one of them) is not seen; the package comes from the new
environment's own site-packages, which the test checks.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import pytest

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]
# What is not part of the source tree a build reads.
NOT_SOURCE = (
    ".git",
    ".venv",
    ".pytest_cache",
    ".ruff_cache",
    "build",
    "dist",
    "tmp",
    "workdirs",
    "*.egg-info",
    "__pycache__",
)
# Each console script and flags its --help lists.
CONSOLE_SCRIPTS = {
    "sasmamba-train": ["--config"],
    "sasmamba-eval": ["--config"],
    "sasmamba-aot": ["--config", "--topology"],
    "sasmamba-infer": ["--checkpoint", "--input"],
    "sasmamba-export": ["--checkpoint"],
    "sasmamba-convert": [],
}


class Installed:
    def __init__(self, venv: pathlib.Path, cwd: pathlib.Path):
        self.venv, self.cwd = venv, cwd
        self.bin = venv / "bin"
        self.python = self.bin / "python"
        self.site_packages = pathlib.Path(
            sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)})
        )
        # No PYTHONPATH (the repository) or this environment leaking in.
        self.env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
        }
        self.env["PYTHONNOUSERSITE"] = "1"

    def run(self, *command, timeout=300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(part) for part in command],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    root = tmp_path_factory.mktemp("installed")
    # A copy of the source tree: the build writes build/ and *.egg-info next to its sources.
    source = root / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    empty = root / "empty"
    empty.mkdir()
    env = Installed(venv, empty)
    dependencies = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (env.site_packages / "dependencies.pth").write_text("".join(f"{path}\n" for path in dependencies))
    # pip and setuptools from this environment; nothing downloaded. --ignore-installed:
    # pip sees this environment's editable install too and must leave it alone.
    result = env.run(
        env.python,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--ignore-installed",
        "--disable-pip-version-check",
        "--quiet",
        source,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return env


def test_the_installed_package_is_imported(installed):
    result = installed.run(installed.python, "-c", "import sasmamba_jax; print(sasmamba_jax.__file__)")
    assert result.returncode == 0, result.stderr
    path = pathlib.Path(result.stdout.strip())
    assert path == installed.site_packages / "sasmamba_jax" / "__init__.py"


def test_gpu_target_files_are_installed(installed):
    code = "from sasmamba_jax import targets as t; print(all(t.gpu_target_config(c) for c in t.GPU_CARDS))"
    result = installed.run(installed.python, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


def test_configs_come_with_the_package_only(installed):
    result = installed.run(
        installed.python,
        "-c",
        "import sasmamba_jax.configs.h36m_243 as c; print(c.__file__); print(c.get_config().model.depth)",
    )
    assert result.returncode == 0, result.stderr
    assert pathlib.Path(result.stdout.split()[0]).is_relative_to(installed.site_packages)
    result = installed.run(installed.python, "-c", "import configs")
    assert result.returncode == 1
    assert "ModuleNotFoundError: No module named 'configs'" in result.stderr


@pytest.mark.parametrize("script", sorted(CONSOLE_SCRIPTS))
def test_console_script_help(installed, script):
    result = installed.run(installed.bin / script, "--help")
    assert result.returncode == 0, result.stdout + result.stderr
    for flag in CONSOLE_SCRIPTS[script]:
        assert flag in result.stdout, f"{script} --help does not list {flag}:\n{result.stdout}"
    assert "usage" in result.stdout.lower() or "flags" in result.stdout.lower(), result.stdout


@pytest.mark.parametrize("tool", ["infer", "convert", "export"])
def test_module_help(installed, tool):
    result = installed.run(installed.python, "-m", f"sasmamba_jax.{tool}", "--help")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "usage" in result.stdout.lower(), result.stdout


def test_aot_compiles_a_bundled_config(installed):
    # A bundled config by name, read from the installed package.
    result = installed.run(
        installed.python,
        "-m",
        "sasmamba_jax.aot",
        "--config=tiny",
        "--topology=v5e:1x1",
        "--mode=forward",
        "--batch=1",
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fits" in result.stdout, result.stdout
