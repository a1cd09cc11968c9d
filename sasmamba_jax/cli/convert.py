"""``python -m sasmamba_jax.convert``: release ``.pth`` <-> model directory.

    python -m sasmamba_jax.convert CKPT.pth OUT_DIR [--check REF.npz] [--atol 1e-4]
    python -m sasmamba_jax.convert --to-pytorch OUT_DIR new.pth

Exit status 1 when ``--check`` finds the outputs differ; bad input: one line,
exit status 2 (``cli.program``).
"""

import dataclasses
import os
import sys

import numpy as np

from sasmamba_jax.cli import program
from sasmamba_jax.io import pytorch
from sasmamba_jax.io.errors import CheckpointError
from sasmamba_jax.io.loader import load_model
from sasmamba_jax.io.model_dirs import export_pytorch_state_dict, save_model
from sasmamba_jax.model.forward import predict
from sasmamba_jax.model.precision import PARITY_MATMUL_PRECISION
from sasmamba_jax.model.sasmamba import SasMamba


def _check_against_reference(model: SasMamba, reference_npz: str, atol: float) -> bool:
    with np.load(reference_npz, allow_pickle=False) as ref:
        if "x" not in ref or "y" not in ref:
            raise CheckpointError(f"{reference_npz} must hold arrays 'x' and 'y'")
        x, y = ref["x"], ref["y"]
    # float32 matmuls, as the release computes: the platform's default is one
    # bfloat16 pass on TPU and TF32 on recent NVIDIA GPUs.
    out = predict(model, x, matmul_precision=PARITY_MATMUL_PRECISION)
    abs_err = float(np.max(np.abs(out - y)))
    rel_err = float(np.max(np.abs(out - y) / (np.abs(y) + 1e-6)))
    ok = abs_err <= atol
    print(
        f"check against {reference_npz}: max abs error {abs_err:.3e}, max rel error {rel_err:.3e} "
        f"({'OK' if ok else 'FAILED'}, atol {atol:g})"
    )
    return ok


@program.command("convert")
def main(argv: list[str] | None = None) -> int:
    """``python -m sasmamba_jax.convert``: release ``.pth`` <-> model directory; the exit status."""
    parser = program.ArgumentParser(
        "convert",
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

    if args.to_pytorch:
        model = load_model(args.source)
        if os.path.exists(args.destination) and not args.overwrite:
            raise CheckpointError(f"{args.destination} exists (use --overwrite to replace it)")
        pytorch.write_pytorch_checkpoint(export_pytorch_state_dict(model), args.destination)
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


def run() -> None:
    """The console script ``sasmamba-convert`` and ``python -m sasmamba_jax.convert``."""
    sys.exit(main())
