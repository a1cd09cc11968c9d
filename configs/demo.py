"""A small SasMamba on the bundled CMU demo set: what ``python train.py`` runs with no --config.

Trains in a few minutes on a laptop CPU and exercises exactly the Human3.6M
code path (the demo set is in MotionBERT's Human3.6M format).
"""

import pathlib

from sasmamba_jax.configs import common

DEMO_PICKLE = pathlib.Path(__file__).resolve().parents[1] / "data" / "cmu_demo" / "h36m_cmu_s01.pkl"


def get_config():
    config = common.base_config()
    config.model.num_frames = 27
    config.model.dim = 32
    config.model.depth = 1
    config.model.drop_path_rate = 0.0
    config.data.pkl_path = str(DEMO_PICKLE)
    config.batch_size = 8
    config.num_epochs = 10
    config.log_every_steps = 20
    # A few hundred steps, not the release's 300 epochs: a higher learning
    # rate that decays faster (x0.8 per epoch instead of x0.99).
    config.optimizer.learning_rate = 3e-3
    config.optimizer.lr_decay = 0.8
    config.lock()
    return config
