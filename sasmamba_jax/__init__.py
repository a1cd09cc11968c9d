"""SasMamba in JAX/Flax NNX."""
