"""A portable serving artefact: the jitted eval forward serialised with `jax.export`.

    python -m sasmamba_jax.export --checkpoint CKPT --frames 243 --batch 1 out.jax

writes ``out.jax``, the StableHLO of the model's eval forward (parameters
included as constants) for input (batch, frames, 17, in_chans) float32, and
``out.jax.json``, its metadata (model config, input and output shapes,
whether flip averaging is included, platforms, jax version).
`sasmamba_jax.inference.load_exported` runs it with jax alone, without this
package's model code; so does ``jax.export.deserialize`` on the file's bytes.
"""

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx

from sasmamba_jax import skeleton
from sasmamba_jax.checkpoint import load_model
from sasmamba_jax.eval_lib import MATMUL_PRECISIONS, eval_forward, use_matmul_precision
from sasmamba_jax.inference import EXPORT_FORMAT, EXPORT_METADATA_SUFFIX
from sasmamba_jax.model import SasMamba
from sasmamba_jax.ops.selective_scan import lowered_for_platforms


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
            program (``eval_lib.MATMUL_PRECISIONS``), or None for the caller's.

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


def _parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m sasmamba_jax.export",
        description="Serialise SasMamba's eval forward (StableHLO via jax.export) for a fixed input shape; "
        "load it with sasmamba_jax.inference.load_exported.",
    )
    parser.add_argument("output", help="output file (e.g. out.jax); metadata goes to OUTPUT.json")
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="a model directory (Orbax), a release .pth checkpoint or a train.py workdir",
    )
    parser.add_argument("--frames", type=int, default=None, help="frames T (default: the model's)")
    parser.add_argument("--batch", type=int, default=1, help="batch size B (default 1)")
    parser.add_argument("--flip-tta", action="store_true", help="include flip test-time averaging")
    parser.add_argument(
        "--platforms",
        type=lambda text: tuple(text.split(",")),
        default=None,
        help="comma-separated, e.g. cpu,cuda (default: this machine's backend)",
    )
    parser.add_argument(
        "--matmul-precision",
        choices=MATMUL_PRECISIONS,
        default="default",
        help="float32 matmul precision: the platform's (default; one bfloat16 pass on TPU) or e.g. highest",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        model = load_model(args.checkpoint)
        export_forward(
            model,
            args.output,
            frames=args.frames,
            batch=args.batch,
            flip_tta=args.flip_tta,
            platforms=args.platforms,
            matmul_precision=args.matmul_precision,
        )
    except (ValueError, OSError) as e:  # CheckpointError is a ValueError
        print(f"sasmamba_jax.export: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output} and {args.output}{EXPORT_METADATA_SUFFIX}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
