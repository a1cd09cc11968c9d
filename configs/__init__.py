"""ml_collections configs of the published models and the demo, importable by name (``--config=h36m_243``).

The folder is the repository's top-level ``configs/``, installed as ``sasmamba_jax.configs``.
"""
