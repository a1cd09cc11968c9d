"""The tiny model of the test fixtures (T=27, C=32, depth 2, the release's recipe) on the demo set.

For smoke tests and unit tests: four steps of batch 4.
"""

from sasmamba_jax.configs import common, demo


def get_config():
    config = common.base_config()
    config.model.num_frames = 27
    config.model.dim = 32
    config.model.depth = 2
    config.model.drop_path_rate = 0.0
    config.data.pkl_path = str(demo.DEMO_PICKLE)
    config.num_epochs = 1
    config.max_steps = 4
    config.batch_size = 4
    config.log_every_steps = 1
    config.lock()
    return config
