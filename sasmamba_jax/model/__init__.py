"""SasMamba: the network, its inference forward, matmul precision, size and cost."""

from sasmamba_jax.model.sasmamba import SasMamba, SasMambaConfig

__all__ = ["SasMamba", "SasMambaConfig"]
