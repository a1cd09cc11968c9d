"""Evaluates a SasMamba checkpoint with the release's protocol (``sasmamba_jax.cli.eval``; ``--help``)."""

from sasmamba_jax.cli import eval

if __name__ == "__main__":
    eval.run()
