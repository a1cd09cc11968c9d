"""Trains SasMamba (``sasmamba_jax.cli.train``; ``--help``)."""

from sasmamba_jax.cli import train

if __name__ == "__main__":
    train.run()
