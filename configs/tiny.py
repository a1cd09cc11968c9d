"""The tiny model of the test fixtures (T=27, C=32, depth 2): smoke tests and unit tests."""

from configs import demo


def get_config():
    config = demo.get_config()
    config.unlock()
    config.model.drop_path_rate = 0.0
    config.num_epochs = 1
    config.max_steps = 4
    config.batch_size = 4
    config.log_every_steps = 1
    config.lock()
    return config
