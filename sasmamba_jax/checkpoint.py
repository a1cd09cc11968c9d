"""Model directories (Orbax), training workdirs and ``load_model`` for every checkpoint kind we accept.

A model directory holds ``config.json`` (the ``SasMambaConfig``) and
``params/`` (an Orbax checkpoint of the parameter tree). It is written into a
temporary sibling and renamed into place, so a crash never leaves a
half-written directory behind. A training workdir (``train.py``) holds
``checkpoints/latest`` and ``checkpoints/best``, Orbax checkpoint managers'
directories. Every loader lives here: ``train_lib`` builds on this module and
this module on ``convert``, never the other way round.
"""

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from sasmamba_jax import convert, eval_lib, sharding
from sasmamba_jax.convert import CheckpointError
from sasmamba_jax.model import SasMamba, SasMambaConfig

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
FORMAT = "sasmamba-jax-model"
# A training workdir's checkpoint managers.
CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"
BEST = "best"
# What every loader runs the scan with unless told otherwise: the back end
# measured fastest for the platform, whatever a file recorded.
DEFAULT_SCAN = "auto"


def build_model(config: SasMambaConfig, params: Any, mesh: Mesh | None = None) -> SasMamba:
    """A SasMamba with the given parameters (a pure dict), in eval mode.

    Args:
        config: the model's config.
        params: the parameters, host or device arrays.
        mesh: where the parameters go (``sharding.place_params``); every
            device, replicated, by default (``sharding.default_mesh``).
    """
    abstract = nnx.eval_shape(lambda: SasMamba(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    nnx.replace_by_pure_dict(state, sharding.place_params(params, mesh or sharding.default_mesh()))
    model = nnx.merge(graphdef, state)
    model.eval()
    return model


def params_of(model: SasMamba) -> dict:
    """The model's parameters as a pure dict of arrays."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def abstract_params(config: SasMambaConfig) -> dict:
    """Shapes and dtypes of the parameter tree, for restoring without allocating twice."""
    abstract = nnx.eval_shape(lambda: SasMamba(config, rngs=nnx.Rngs(0)))
    return nnx.to_pure_dict(nnx.state(abstract, nnx.Param))


def export_pytorch_state_dict(model: SasMamba) -> dict[str, np.ndarray]:
    """The release's state_dict (same names, shapes and order) as numpy arrays."""
    return convert.params_to_state_dict(jax.device_get(params_of(model)), model.config.depth)


def save_model(model: SasMamba, directory: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Writes a model directory atomically.

    Raises:
        FileExistsError: ``directory`` exists and ``overwrite`` is False.
    """
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory) and not overwrite:
        raise FileExistsError(f"{directory} exists (pass overwrite=True / --overwrite to replace it)")
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise FileExistsError(f"{directory} exists and is not a directory")
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(directory)}.tmp-")
    # mkdtemp makes the directory private (0700); give it a plain mkdir's permissions.
    os.chmod(staging, 0o777 & ~convert.current_umask())
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(os.path.join(staging, PARAMS_DIR), jax.device_get(params_of(model)))
        with open(os.path.join(staging, CONFIG_FILE), "w") as f:
            json.dump({"format": FORMAT, "model": model.config.to_dict()}, f, indent=2)
        _replace_directory(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _replace_directory(new: str, target: str) -> None:
    if not os.path.exists(target):
        os.rename(new, target)
        return
    retired = tempfile.mkdtemp(dir=os.path.dirname(target), prefix=f".{os.path.basename(target)}.old-")
    os.rmdir(retired)
    os.rename(target, retired)
    os.rename(new, target)
    shutil.rmtree(retired)


def read_model_config(directory: str | os.PathLike) -> SasMambaConfig:
    path = os.path.join(directory, CONFIG_FILE)
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    if meta.get("format") != FORMAT or "model" not in meta:
        raise CheckpointError(f"{path} is not a sasmamba-jax model config")
    return SasMambaConfig.from_dict(meta["model"])


def load_params(params_dir: str | os.PathLike, config: SasMambaConfig, mesh: Mesh) -> dict:
    """Restores a parameter tree saved by ``save_model`` onto ``mesh`` (``sharding.place_params``' layout)."""
    params_dir = os.path.abspath(os.fspath(params_dir))
    if not os.path.isdir(params_dir):
        raise CheckpointError(f"no parameters at {params_dir}")
    target = _restore_target(abstract_params(config), mesh)
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            # Shapes first: orbax refuses a sharded target of another shape
            # with advice about its own options, not the arrays that differ.
            saved = checkpointer.metadata(params_dir).item_metadata.tree
            check_shapes(saved, target, f"the parameters in {params_dir}")
            return checkpointer.restore(params_dir, target)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"cannot restore parameters from {params_dir}: {first_line(e)}") from None


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


def training_model_config(config: Mapping[str, Any]) -> SasMambaConfig:
    """The model a training config describes: its ``model`` fields plus its ``dtype``."""
    return SasMambaConfig.from_dict({**dict(config["model"]), "dtype": config["dtype"]})


def _restore_target(abstract: Any, mesh: Mesh) -> Any:
    """Shapes, dtypes and ``sharding.place_params``' shardings on ``mesh`` of an abstract tree."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        abstract,
        sharding.tree_shardings(mesh, abstract),
    )


def load_model_from_workdir(
    workdir: str | os.PathLike, mesh: Mesh | None = None, **options: Any
) -> SasMamba:
    """The latest checkpoint's model of a training workdir, in eval mode.

    Args:
        workdir: a ``train.py`` workdir.
        mesh: where the parameters go, whatever mesh the run trained on
            (``sharding.place_params``' layout); every device, replicated,
            by default.
        **options: overrides of the model's run options (scan, stride_grad, ...).

    Raises:
        CheckpointError: no checkpoint yet, or one that cannot be restored.
    """
    manager = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR, LATEST))
    step = manager.latest_step()
    if step is None:
        raise CheckpointError(f"{workdir} has no training checkpoint yet")
    try:
        saved_config = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config
        model_cfg = training_model_config(saved_config).with_options(**options)
        graphdef, abstract = nnx.split(nnx.eval_shape(lambda: SasMamba(model_cfg, rngs=nnx.Rngs(0))))
        target = {"params": _restore_target(abstract, mesh or sharding.default_mesh())}
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    target,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                    partial_restore=True,
                )
            ),
        )
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise CheckpointError(f"cannot restore step {step} of {manager.directory}: {first_line(e)}") from None
    check_shapes(restored.state, target, f"the parameters of step {step} in {manager.directory}")
    model = nnx.merge(graphdef, restored.state["params"])
    model.eval()
    return model


def first_line(error: BaseException) -> str:
    """An exception's message reduced to its first line (its type where it has none)."""
    message = str(error).strip()
    return message.splitlines()[0] if message else type(error).__name__


def load_model(
    path: str | os.PathLike, *, mesh: Mesh | None = None, scan: str = DEFAULT_SCAN, **options: Any
) -> SasMamba:
    """Loads a SasMamba in eval mode from any checkpoint we know, its parameters on a device mesh.

    Args:
        path: a release ``.pth`` file (needs torch), a model directory written
            by ``save_model`` / ``python -m sasmamba_jax.convert``, or a
            training workdir (its latest checkpoint).
        mesh: the ("data", "fsdp") mesh the parameters go on, replicated
            unless it has an ``fsdp`` axis (``sharding.place_params``); by
            default every device, replicated (``sharding.default_mesh``).
            ``predict`` and ``lift`` split their batches over it.
        scan: the scan back end; "auto" (the default) runs the one measured
            fastest for the platform, whatever back end the file was saved with.
        **options: overrides of the other non-shape settings, e.g.
            ``stride_grad="exact"``, ``drop_path_rate=0.0``, ``dtype="bfloat16"``.

    Raises:
        CheckpointError: the path is missing, unreadable or does not fit.
    """
    path = os.fspath(path)
    options = {"scan": scan, **options}
    mesh = mesh or sharding.default_mesh()
    if os.path.isfile(path):
        state_dict = convert.read_pytorch_state_dict(path)
        config = convert.infer_config(state_dict).with_options(**options)
        return build_model(config, convert.state_dict_to_params(state_dict, config), mesh)
    if os.path.isfile(os.path.join(path, CONFIG_FILE)):
        config = read_model_config(path).with_options(**options)
        return build_model(config, load_params(os.path.join(path, PARAMS_DIR), config, mesh), mesh)
    if os.path.isdir(os.path.join(path, CHECKPOINT_DIR)):
        return load_model_from_workdir(path, mesh, **options)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    raise CheckpointError(
        f"{path} is neither a .pth file, a model directory (with {CONFIG_FILE}) nor a training workdir"
    )


# ---------------------------------------------------------------------------
# The conversion command line (python -m sasmamba_jax.convert)


def _check_against_reference(model: SasMamba, reference_npz: str, atol: float) -> bool:
    from sasmamba_jax.inference import predict

    with np.load(reference_npz, allow_pickle=False) as ref:
        if "x" not in ref or "y" not in ref:
            raise CheckpointError(f"{reference_npz} must hold arrays 'x' and 'y'")
        x, y = ref["x"], ref["y"]
    # float32 matmuls, as the release computes: the platform's default is one
    # bfloat16 pass on TPU and TF32 on recent NVIDIA GPUs.
    out = predict(model, x, matmul_precision=eval_lib.PARITY_MATMUL_PRECISION)
    abs_err = float(np.max(np.abs(out - y)))
    rel_err = float(np.max(np.abs(out - y) / (np.abs(y) + 1e-6)))
    ok = abs_err <= atol
    print(
        f"check against {reference_npz}: max abs error {abs_err:.3e}, max rel error {rel_err:.3e} "
        f"({'OK' if ok else 'FAILED'}, atol {atol:g})"
    )
    return ok


def convert_main(argv: list[str] | None = None) -> int:
    """``python -m sasmamba_jax.convert``: release ``.pth`` <-> model directory; the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m sasmamba_jax.convert",
        description="Convert SasMamba checkpoints between the PyTorch release and sasmamba-jax.",
    )
    parser.add_argument("source", help="release .pth checkpoint (or, with --to-pytorch, our model directory)")
    parser.add_argument("destination", help="output model directory (or, with --to-pytorch, a .pth file)")
    parser.add_argument(
        "--to-pytorch", action="store_true", help="convert our model directory to a release .pth"
    )
    parser.add_argument("--check", metavar="REF.npz", help="compare outputs with the release's ('x', 'y')")
    parser.add_argument("--atol", type=float, default=1e-4, help="max abs error accepted by --check")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    args = parser.parse_args(argv)

    try:
        if args.to_pytorch:
            model = load_model(args.source)
            if os.path.exists(args.destination) and not args.overwrite:
                raise CheckpointError(f"{args.destination} exists (use --overwrite to replace it)")
            convert.write_pytorch_checkpoint(export_pytorch_state_dict(model), args.destination)
            print(f"wrote {args.destination}")
            return 0
        if args.check and not os.path.isfile(args.check):
            raise CheckpointError(f"reference file not found: {args.check}")
        model = load_model(args.source)
        save_model(model, args.destination, overwrite=args.overwrite)
        print(f"wrote {args.destination} ({dataclasses.asdict(model.config)})")
        if args.check and not _check_against_reference(model, args.check, args.atol):
            return 1
        return 0
    except (ValueError, ImportError, OSError) as e:
        # CheckpointError is a ValueError; OSError covers unwritable destinations.
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
