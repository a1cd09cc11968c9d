"""One float32 matmul precision for training, evaluation and inference, and what it compiles to on a TPU.

The TPU compiles are deviceless (libtpu, no TPU): ``targets.tpu_devices``.
"""

import os

# Before libtpu loads: no TPU VM metadata server to ask, and no claim on the
# one-TPU-user lock other JAX processes may hold.
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import re  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402
from sasmamba_jax.configs import common  # noqa: E402

from sasmamba_jax import targets  # noqa: E402
from sasmamba_jax.io import model_dirs
from sasmamba_jax.lifting import sequences
from sasmamba_jax.model import forward, precision
from sasmamba_jax.model.sasmamba import SasMamba, SasMambaConfig  # noqa: E402
from sasmamba_jax.parallel import sharding

# Small enough to compile for a TPU in seconds; "auto" picks the Pallas scan there.
MODEL = SasMambaConfig(num_frames=9, dim=16, depth=1, scan="auto")
# libtpu compiles the model's dot_generals and convolutions alike to HLO
# convolution instructions (a dot, where one is left, is a dot).
MATMUL = re.compile(r"= f32\[[^\]]*\]\{[^}]*\} (dot|convolution)\(")


def _v5e_forward_hlo(matmul_precision: str) -> str:
    """The eval forward (``forward._predict_batch``, batch 1) compiled for one v5e chip, as HLO text."""
    devices = targets.tpu_devices("v5e:1x1")
    mesh = sharding.default_mesh(devices)
    model = nnx.eval_shape(lambda: SasMamba(MODEL, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(nnx.view(model, deterministic=True))
    params = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        params,
        sharding.tree_shardings(mesh, params),
    )
    x = jax.ShapeDtypeStruct((1, MODEL.num_frames, 17, 2), np.float32, sharding=sharding.batch_sharding(mesh))
    replicated = NamedSharding(mesh, PartitionSpec())
    with (
        targets.persistent_cache_for(devices),
        jax.set_mesh(mesh),
        precision.use_matmul_precision(matmul_precision),
    ):
        return forward._predict_batch.lower(graphdef, params, x, None, replicated).compile().as_text()


def _float32_matmuls(hlo: str) -> list[str]:
    return [line.strip() for line in hlo.splitlines() if MATMUL.search(line)]


@pytest.fixture(scope="module")
def v5e_matmuls():
    return {precision: _float32_matmuls(_v5e_forward_hlo(precision)) for precision in ("default", "highest")}


# Slow: compiles for compile-only devices cannot be cached, so every run would pay them.
@pytest.mark.slow
def test_on_tpu_the_default_precision_leaves_float32_matmuls_to_the_platform(v5e_matmuls):
    """No operand_precision: the TPU's default, one bfloat16 pass."""
    # The patch embedding, the layer loop's linear layers, its deformable
    # convolution (offsets and sampling) and the head, at least.
    assert len(v5e_matmuls["default"]) >= 6
    assert not [matmul for matmul in v5e_matmuls["default"] if "operand_precision" in matmul]


@pytest.mark.slow  # the same compiles as above
def test_on_tpu_highest_makes_every_float32_matmul_full_precision(v5e_matmuls):
    assert len(v5e_matmuls["highest"]) == len(v5e_matmuls["default"])
    assert all("operand_precision={highest,highest}" in matmul for matmul in v5e_matmuls["highest"])


def test_the_configs_keep_the_platform_default():
    assert common.base_config().matmul_precision == "default"
    assert "default" in precision.MATMUL_PRECISIONS and precision.PARITY_MATMUL_PRECISION == "highest"


def test_an_unknown_precision_is_named():
    with pytest.raises(ValueError, match=r"unknown matmul precision 'fast'; expected one of \('default'"):
        precision.check_matmul_precision("fast")


def test_predict_and_lift_trace_under_the_precision_asked_for_in_every_thread(monkeypatch):
    """``lift`` calls the forward from a thread pool; jax's precision setting is per thread."""
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda leaf: (0.2 * rng.standard_normal(leaf.shape)).astype(np.float32),
        model_dirs.abstract_params(MODEL),
    )
    model = model_dirs.build_model(MODEL.with_options(scan="sequential"), params)
    seen = []
    original = forward._predict_batch

    def recording_forward(*args):
        seen.append(jax.config.jax_default_matmul_precision)
        return original(*args)

    monkeypatch.setattr(forward, "_predict_batch", recording_forward)
    forward.predict(model, rng.standard_normal((2, MODEL.num_frames, 17, 2)), matmul_precision="highest")
    assert seen == ["highest"]
    seen.clear()
    keypoints = rng.uniform(-0.5, 0.5, (4 * MODEL.num_frames, 17, 2))
    sequences.lift(model, keypoints, threads=2, matmul_precision="high")
    assert len(seen) > 2 and set(seen) == {"high"}
