"""``python -m sasmamba_jax.infer``: the command line of ``sasmamba_jax.cli.infer`` (``--help``)."""

from sasmamba_jax.cli import infer

if __name__ == "__main__":
    infer.run()
