"""``python -m sasmamba_jax.convert``: the command line of ``sasmamba_jax.cli.convert`` (``--help``)."""

from sasmamba_jax.cli import convert

if __name__ == "__main__":
    convert.run()
