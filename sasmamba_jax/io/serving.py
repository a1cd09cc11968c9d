"""A portable serving artefact: the jitted eval forward serialised with ``jax.export``, and its loader.

``export_forward`` writes ``out.jax``, the StableHLO of the model's eval
forward (parameters included as constants) for input (batch, frames, 17,
in_chans) float32, and ``out.jax.json``, its metadata (model config, input
and output shapes, whether flip averaging is included, platforms, jax
version). ``load_exported`` runs it with jax alone, without this package's
model code; so does ``jax.export.deserialize`` on the file's bytes. The
command line is ``python -m sasmamba_jax.export``.
"""

import contextlib
import json
import os
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx

from sasmamba_jax import skeleton
from sasmamba_jax.model.forward import eval_forward
from sasmamba_jax.model.precision import use_matmul_precision
from sasmamba_jax.model.sasmamba import SasMamba
from sasmamba_jax.ops.selective_scan import lowered_for_platforms

EXPORT_FORMAT = "sasmamba-jax-export"


EXPORT_METADATA_SUFFIX = ".json"


def export_forward(
    model: SasMamba,
    path: str | os.PathLike,
    *,
    frames: int | None = None,
    batch: int = 1,
    flip_tta: bool = False,
    platforms: Sequence[str] | None = None,
    matmul_precision: str | None = None,
) -> str:
    """Serialises the model's eval forward for one input shape.

    Args:
        model: a SasMamba (exported in eval mode whatever its mode).
        path: output file; the metadata goes to ``path + ".json"``.
        frames: T <= the model's frames; the model's frames by default.
        batch: B >= 1.
        flip_tta: include the release's flip averaging (Human3.6M joint
            order) in the exported function, doubling its work.
        platforms: e.g. ``("cpu", "cuda")``; the default backend's by default.
        matmul_precision: the float32 matmul precision written into the
            program (``model.precision.MATMUL_PRECISIONS``), or None for the caller's.

    Returns:
        `path`, as a string.

    Raises:
        ValueError: `frames` or `batch` out of range.
    """
    config = model.config
    frames = config.num_frames if frames is None else frames
    if not 1 <= frames <= config.num_frames:
        raise ValueError(f"frames must be in [1, {config.num_frames}] (the model's frames), got {frames}")
    if batch < 1:
        raise ValueError(f"batch must be positive, got {batch}")
    graphdef, params = nnx.split(nnx.view(model, deterministic=True))
    # The artefact is a one-device program with the parameters as constants,
    # whatever devices they were loaded onto.
    params = jax.device_get(params)
    permutation = skeleton.FLIP_PERMUTATION if flip_tta else None

    def forward(x):
        return eval_forward(nnx.merge(graphdef, params), x, permutation)

    input_shape = (batch, frames, config.num_joints, config.in_chans)
    # Several platforms: each gets its own scan back end when lowered, not the
    # exporting host's.
    per_platform = lowered_for_platforms(platforms) if platforms else contextlib.nullcontext()
    with use_matmul_precision(matmul_precision), per_platform:
        exported = jax.export.export(jax.jit(forward), platforms=platforms)(
            jax.ShapeDtypeStruct(input_shape, np.float32)
        )
        precision = jax.config.jax_default_matmul_precision or "default"
    path = os.fspath(path)
    with open(path, "wb") as f:
        f.write(exported.serialize())
    metadata = {
        "format": EXPORT_FORMAT,
        "input_shape": list(input_shape),
        "output_shape": list(exported.out_avals[0].shape),
        "input": "normalised 2D keypoints: xy / W * 2 - [1, H / W] (and confidence if in_chans is 3)",
        "output": "root-relative 3D poses in normalised units (multiply by W / 2 for pixels)",
        "flip_tta": flip_tta,
        "matmul_precision": precision,
        "platforms": list(exported.platforms),
        "jax_version": jax.__version__,
        "model": config.to_dict(),
    }
    with open(path + EXPORT_METADATA_SUFFIX, "w") as f:
        json.dump(metadata, f, indent=2)
    return path


class ExportedForward:
    """A forward pass serialised by ``export_forward``, run with jax alone.

    Attributes:
        input_shape: the (B, T, 17, C) float32 shape it was exported for.
        output_shape: (B, T, 17, 3).
        metadata: the sidecar JSON (model config, flip_tta, ...), or None
            when the sidecar file is absent.
    """

    def __init__(self, exported: jax.export.Exported, metadata: dict | None):
        self._exported = exported
        self._call = jax.jit(exported.call)
        self.input_shape = tuple(exported.in_avals[0].shape)
        self.output_shape = tuple(exported.out_avals[0].shape)
        self.metadata = metadata

    def __call__(self, x) -> np.ndarray:
        """(B, T, 17, C) normalised keypoints, exactly `input_shape` -> (B, T, 17, 3) numpy."""
        x = np.asarray(x, np.float32)
        if x.shape != self.input_shape:
            raise ValueError(
                f"this exported forward takes input of shape {self.input_shape}, got {x.shape} "
                "(export again with other --batch / --frames for other shapes)"
            )
        return np.asarray(self._call(x))


def load_exported(path: str | os.PathLike) -> ExportedForward:
    """Loads a forward pass written by ``python -m sasmamba_jax.export``.

    Args:
        path: the serialised StableHLO file; its metadata is read from
            ``path + ".json"`` when present.

    Raises:
        ValueError: the file is missing or not a serialised jax export.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            exported = jax.export.deserialize(bytearray(f.read()))
    except OSError as e:
        raise ValueError(f"cannot read exported forward {path}: {e.strerror}") from None
    except Exception as e:
        raise ValueError(f"{path} is not a serialised jax.export artefact ({type(e).__name__})") from None
    metadata_path = path + EXPORT_METADATA_SUFFIX
    metadata = None
    if os.path.isfile(metadata_path):
        with open(metadata_path) as f:
            metadata = json.load(f)
    return ExportedForward(exported, metadata)
