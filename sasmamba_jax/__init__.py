"""SasMamba in JAX/Flax NNX: 2D keypoint sequences to 3D poses, numerically matched to the PyTorch release.

The top-level names are loaded on first use, so ``import sasmamba_jax`` stays
light and ``python -m sasmamba_jax.<tool>`` runs each tool's module once.
"""

import importlib

_EXPORTS = {
    "SasMamba": "sasmamba_jax.model",
    "SasMambaConfig": "sasmamba_jax.model",
    "count_params": "sasmamba_jax.flops",
    "export_pytorch_state_dict": "sasmamba_jax.checkpoint",
    "load_model": "sasmamba_jax.checkpoint",
    "predict": "sasmamba_jax.inference",
    "save_model": "sasmamba_jax.checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sasmamba_jax' has no attribute {name!r}")


def __dir__():
    return __all__
