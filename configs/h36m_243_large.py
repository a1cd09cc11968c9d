"""SasMamba-large on Human3.6M, 243 frames.

The release does not publish the large configuration. Width 128 and 10 layers
reproduce the paper's figures (4.1M parameters as a profiler counts them;
5.57M trainable in all; see the README).
"""

from sasmamba_jax.configs import common


def get_config():
    config = common.base_config()
    config.model.dim = 128
    config.model.depth = 10
    # Sharding parameters and optimizer state pays off from this size on.
    config.mesh.fsdp = -1
    config.mesh.data = 1
    config.lock()
    return config
