"""SasMamba in JAX/Flax NNX: 2D keypoint sequences to 3D poses, numerically matched to the PyTorch release.

The top-level names are loaded on first use, so ``import sasmamba_jax`` stays
light and ``python -m sasmamba_jax.<tool>`` runs each tool's module once.
"""

import importlib

from sasmamba_jax import host_platform

# Before anything here imports jax: on a host with no TPU or GPU, jax starts
# on the CPU without the CUDA plugin's and libtpu's start-up errors.
host_platform.use_cpu_without_accelerator()

_EXPORTS = {
    "LiftOptions": "sasmamba_jax.lifting.sequences",
    "SasMamba": "sasmamba_jax.model.sasmamba",
    "SasMambaConfig": "sasmamba_jax.model.sasmamba",
    "StreamingLifter": "sasmamba_jax.lifting.streaming",
    "count_params": "sasmamba_jax.model.flops",
    "export_pytorch_state_dict": "sasmamba_jax.io.model_dirs",
    "lift": "sasmamba_jax.lifting.sequences",
    "load_model": "sasmamba_jax.io.loader",
    "predict": "sasmamba_jax.model.forward",
    "save_model": "sasmamba_jax.io.model_dirs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sasmamba_jax' has no attribute {name!r}")


def __dir__():
    return __all__
