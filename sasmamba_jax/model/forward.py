"""The model's inference forward: one jitted program behind every prediction.

``_predict_batch`` is the one jitted forward: ``predict_batch`` runs it for
``train.py``'s periodic evaluation, ``eval.py``, ``predict`` and ``lift`` (so
``infer``), and the aot tool's ``--mode=forward`` compiles it. It runs under
the mesh the parameters live on (``jax.set_mesh``: the Pallas scan and the
deformable convolution split themselves over its batch) and under one
float32 matmul precision. The serving artefact (``io.serving``) serialises
``eval_forward``, its body, as a one-device program.
"""

import functools

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sasmamba_jax.data.augment import flip_pose
from sasmamba_jax.model.precision import use_matmul_precision
from sasmamba_jax.model.sasmamba import SasMamba, check_input_shape
from sasmamba_jax.parallel import sharding
from sasmamba_jax.parallel.sharding import batch_sharding


def eval_forward(
    model: SasMamba, windows: jax.Array, flip_permutation: tuple[int, ...] | None = None
) -> jax.Array:
    """The model's forward, averaged with its flipped-back output on the flipped input.

    Traceable (call it under `jax.jit`); the caller puts the model in eval mode.

    Args:
        model: a SasMamba.
        windows: (B, W, J, C) normalised keypoints.
        flip_permutation: joint permutation that mirrors a pose, or None for
            the plain forward.

    Returns:
        (B, W, J, 3) float32.
    """
    direct = model(windows)
    if flip_permutation is None:
        return direct
    # Two calls rather than one on a doubled batch: on CPU the model's time per
    # window grows with the batch (lifting.sequences.DEFAULT_BATCH_SIZE).
    flipped = model(flip_pose(windows, flip_permutation))
    return (direct + flip_pose(flipped, flip_permutation)) / 2


@functools.partial(jax.jit, static_argnames=("graphdef", "flip_permutation", "out_sharding"))
def _predict_batch(graphdef, params, x, flip_permutation, out_sharding):
    pred = eval_forward(nnx.merge(graphdef, params), x, flip_permutation)
    return jax.lax.with_sharding_constraint(pred, out_sharding)


def predict_batch(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    windows: np.ndarray,
    *,
    flip_permutation: tuple[int, ...] | None,
    mesh: Mesh,
    matmul_precision: str | None = None,
) -> np.ndarray:
    """One batch of windows through ``_predict_batch``, split over the mesh's devices.

    The batch is padded to a multiple of the device count. Every process
    passes the same ``windows`` and gets every prediction back. Thread-safe:
    it enters the mesh and the precision itself.

    Args:
        graphdef, params: an eval-mode model split with ``nnx.split``, its
            parameters on ``mesh`` (``sharding.place_params``).
        windows: (B, W, 17, C) model inputs.
        flip_permutation: average with the mirrored input's prediction
            (test-time flip augmentation), or None.
        mesh: the ("data", "fsdp") mesh the parameters live on.
        matmul_precision: one of ``MATMUL_PRECISIONS``, or None for the caller's.

    Returns:
        (B, W, 17, 3) float32 predictions.
    """
    windows = np.asarray(windows, np.float32)
    num_devices = mesh.devices.size
    padding = -len(windows) % num_devices
    padded = np.concatenate([windows, np.zeros((padding, *windows.shape[1:]), np.float32)])
    with jax.set_mesh(mesh), use_matmul_precision(matmul_precision):
        x = jax.make_array_from_callback(padded.shape, batch_sharding(mesh), lambda index: padded[index])
        pred = _predict_batch(graphdef, params, x, flip_permutation, NamedSharding(mesh, PartitionSpec()))
    return np.asarray(pred)[: len(windows)]


def eval_graphdef(graphdef: nnx.GraphDef, params: nnx.State) -> nnx.GraphDef:
    """The eval-mode (no DropPath) twin of a model's graphdef."""
    model = nnx.merge(graphdef, params)
    return nnx.split(nnx.view(model, deterministic=True))[0]


def predict(model: SasMamba, x, *, matmul_precision: str | None = None) -> np.ndarray:
    """Runs the model in eval mode (no DropPath) on a batch of clips.

    The batch is split over the devices of the mesh the model's parameters
    live on (``io.loader.load_model`` puts them on every device).

    Args:
        model: a SasMamba (its train/eval mode is left untouched).
        x: (B, T, 17, in_chans) numpy or jax array of normalised keypoints,
            T <= the model's frames.
        matmul_precision: float32 matmul precision (``precision.MATMUL_PRECISIONS``;
            ``precision.PARITY_MATMUL_PRECISION`` to compare with the release),
            or None for the caller's (``jax.default_matmul_precision``).

    Returns:
        (B, T, 17, 3) float32 root-relative 3D poses.

    Raises:
        ValueError: wrong shape, or NaN/inf keypoints.
    """
    x = np.asarray(x, np.float32)
    check_input_shape(x.shape, model.config)
    if not np.isfinite(x).all():
        raise ValueError("input keypoints contain NaN or inf; fill or drop missing keypoints first")
    graphdef, params = nnx.split(nnx.view(model, deterministic=True))
    return predict_batch(
        graphdef,
        params,
        x,
        flip_permutation=None,
        mesh=sharding.params_mesh(params),
        matmul_precision=matmul_precision,
    )
