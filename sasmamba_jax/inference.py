"""Jitted inference on 2D keypoint clips."""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from sasmamba_jax.model import SasMamba, check_input_shape


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, x):
    return nnx.merge(graphdef, state)(x)


def predict(model: SasMamba, x) -> jax.Array:
    """Runs the model in eval mode (no DropPath) on a batch of clips.

    Args:
        model: a SasMamba (its train/eval mode is left untouched).
        x: (B, T, 17, in_chans) numpy or jax array of normalised keypoints,
            T <= the model's frames.

    Returns:
        (B, T, 17, 3) float32 root-relative 3D poses.

    Raises:
        ValueError: wrong shape, or NaN/inf keypoints.
    """
    x = jnp.asarray(x, jnp.float32)
    check_input_shape(x.shape, model.config)
    if not bool(jnp.isfinite(x).all()):
        raise ValueError("input keypoints contain NaN or inf; fill or drop missing keypoints first")
    graphdef, state = nnx.split(nnx.view(model, deterministic=True))
    return _apply(graphdef, state, x)
