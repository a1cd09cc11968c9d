"""``python -m sasmamba_jax.export``: the command line of ``sasmamba_jax.cli.export`` (``--help``)."""

from sasmamba_jax.cli import export

if __name__ == "__main__":
    export.run()
