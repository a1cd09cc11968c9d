"""``python -m sasmamba_jax.export``: a model's eval forward as a serving artefact (``io.serving``).

    python -m sasmamba_jax.export --checkpoint CKPT --frames 243 --batch 1 out.jax
    python -m sasmamba_jax.export --checkpoint CKPT --flip-tta out.jax

Without ``--flip-tta`` the artefact is the plain forward (infer flips by
default; ``--no-flip-tta`` there). Errors: one line, exit status 2
(``cli.program``).
"""

import argparse
import sys
from collections.abc import Sequence

from sasmamba_jax.cli import program
from sasmamba_jax.io.loader import load_model
from sasmamba_jax.io.serving import EXPORT_METADATA_SUFFIX, export_forward
from sasmamba_jax.model.precision import MATMUL_PRECISIONS


def _parse_args(argv):
    parser = program.ArgumentParser(
        "export",
        description="Serialise SasMamba's eval forward (StableHLO via jax.export) for a fixed input shape; "
        "load it with sasmamba_jax.io.serving.load_exported.",
    )
    parser.add_argument("output", help="output file (e.g. out.jax); metadata goes to OUTPUT.json")
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="a model directory (Orbax), a release .pth checkpoint or a train.py workdir",
    )
    parser.add_argument("--frames", type=int, default=None, help="frames T (default: the model's)")
    parser.add_argument("--batch", type=int, default=1, help="batch size B (default 1)")
    parser.add_argument(
        "--flip-tta",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="include flip test-time averaging in the artefact (default: off; infer's default is on)",
    )
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


@program.command("export")
def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
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
    print(f"wrote {args.output} and {args.output}{EXPORT_METADATA_SUFFIX}")
    return 0


def run() -> None:
    """The console script ``sasmamba-export`` and ``python -m sasmamba_jax.export``."""
    sys.exit(main())
