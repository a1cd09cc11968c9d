"""Numerical building blocks of SasMamba: selective scan, stride scan, deformable conv, conv."""

from sasmamba_jax.ops.deform_conv import deform_conv2d_depthwise
from sasmamba_jax.ops.selective_scan import BACKENDS, selective_scan
from sasmamba_jax.ops.stride_scan import STRIDE_GRADS, stride_merge, stride_scan

__all__ = [
    "BACKENDS",
    "STRIDE_GRADS",
    "deform_conv2d_depthwise",
    "selective_scan",
    "stride_merge",
    "stride_scan",
]
