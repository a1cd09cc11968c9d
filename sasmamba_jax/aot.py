"""``python -m sasmamba_jax.aot``: the command line of ``sasmamba_jax.cli.aot`` (``--help``)."""

from sasmamba_jax.cli import aot

if __name__ == "__main__":
    aot.run()
