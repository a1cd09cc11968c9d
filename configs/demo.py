"""A small SasMamba on the bundled CMU demo set: what ``python train.py`` runs with no --config.

Trains in a few minutes on a laptop CPU and exercises exactly the Human3.6M
code path (the demo set is in MotionBERT's Human3.6M format).
"""

import pathlib

from configs import common

DEMO_PICKLE = pathlib.Path(__file__).resolve().parents[1] / "data" / "cmu_demo" / "h36m_cmu_s01.pkl"


def get_config():
    config = common.base_config()
    config.model.num_frames = 27
    config.model.dim = 32
    config.model.depth = 2
    config.model.drop_path_rate = 0.1
    config.data.pkl_path = str(DEMO_PICKLE)
    config.batch_size = 8
    config.num_epochs = 5
    config.log_every_steps = 20
    config.optimizer.learning_rate = 1e-3
    config.lock()
    return config
