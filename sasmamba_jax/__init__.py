"""SasMamba in JAX/Flax NNX: 2D keypoint sequences to 3D poses, numerically matched to the PyTorch release."""

from sasmamba_jax.checkpoint import export_pytorch_state_dict, load_model, save_model
from sasmamba_jax.flops import count_params
from sasmamba_jax.inference import predict
from sasmamba_jax.model import SasMamba, SasMambaConfig

__all__ = [
    "SasMamba",
    "SasMambaConfig",
    "count_params",
    "export_pytorch_state_dict",
    "load_model",
    "predict",
    "save_model",
]
