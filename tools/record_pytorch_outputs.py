"""Records the PyTorch release's outputs for `python -m sasmamba_jax.convert --check`.

Run it INSIDE the release's own environment (its CUDA selective-scan kernel,
timm, torchvision and friends installed), from or pointing at the release's
checkout. It needs nothing from sasmamba-jax:

    cd sasmamba                                   # the release's checkout
    python /path/to/sasmamba-jax/tools/record_pytorch_outputs.py \
        --checkpoint checkpoint/latest_epoch.pth.tr --output ref.npz

It builds the release's ``SasPoseMamba`` with the configuration read off the
checkpoint's tensor shapes, loads the weights with ``strict=True``, runs it in
eval mode on ``--input`` (a .npy of shape (B, T, 17, C)) or on seeded uniform
noise in [-1, 1], and writes ``x``, ``y`` and the constructor arguments (JSON,
under ``config``) to the output .npz.
"""

import argparse
import json
import os
import sys

import numpy as np
import torch


def read_state_dict(path):
    """The release's weights from any of its checkpoint layouts, without DataParallel's prefix."""
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(loaded, dict) and "model" in loaded:
        loaded = loaded["model"]
    elif isinstance(loaded, dict) and "state_dict" in loaded:
        loaded = loaded["state_dict"]
    return {name.removeprefix("module."): tensor for name, tensor in loaded.items()}


def constructor_arguments(state_dict):
    """``SasPoseMamba`` keyword arguments that reproduce the checkpoint's shapes."""
    dim, in_chans = state_dict["Spatial_patch_to_embedding.weight"].shape
    depth = 0
    while f"STEblocks.{depth}.norm.weight" in state_dict:
        depth += 1
    return dict(
        num_frame=state_dict["Temporal_pos_embed"].shape[1],
        num_joints=state_dict["Spatial_pos_embed"].shape[1],
        in_chans=in_chans,
        embed_dim_ratio=dim,
        depth=depth,
        mlp_ratio=state_dict["STEblocks.0.mlp.fc1.weight"].shape[0] / dim,
        ssm_conv=state_dict["STEblocks.0.op.conv2d.dcn.weight"].shape[-1],
    )


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, help="the release's .pth checkpoint")
    parser.add_argument("--output", required=True, help="where to write x, y and config (.npz)")
    parser.add_argument("--release-dir", default=".", help="the release's checkout (default: here)")
    parser.add_argument("--input", help="a .npy of inputs (B, T, 17, C); default: seeded noise")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, help="clip length (default: the model's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    sys.path.insert(0, os.path.abspath(args.release_dir))
    from model.SasMamba import SasPoseMamba  # the release's model

    state_dict = read_state_dict(args.checkpoint)
    config = constructor_arguments(state_dict)
    model = SasPoseMamba(**config)
    model.load_state_dict(state_dict, strict=True)
    model = model.to(args.device).eval()

    if args.input:
        x = np.load(args.input).astype(np.float32)
    else:
        frames = args.frames or config["num_frame"]
        shape = (args.batch, frames, config["num_joints"], config["in_chans"])
        x = np.random.default_rng(args.seed).uniform(-1, 1, size=shape).astype(np.float32)
    with torch.no_grad():
        y = model(torch.from_numpy(x).to(args.device)).cpu().numpy()
    np.savez(args.output, x=x, y=y, config=json.dumps(config))
    print(f"wrote {args.output}: x {x.shape}, y {y.shape}, config {config}")


if __name__ == "__main__":
    main()
