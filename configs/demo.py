"""A small SasMamba on the bundled CMU demo set: what ``python train.py`` runs with no --config.

Trains in a few minutes on a laptop CPU and exercises exactly the Human3.6M
code path (the demo set is in MotionBERT's Human3.6M format).
"""

import pathlib

from sasmamba_jax.configs import common

DEMO_PICKLE = pathlib.Path(__file__).resolve().parents[1] / "data" / "cmu_demo" / "h36m_cmu_s01.pkl"


def get_config():
    config = common.base_config()
    # A 9-frame window: a step costs about a third of a 27-frame one on the
    # CPU (the scans run over T x 17 steps), and the demo set's clips (stride
    # T / 3) triple, so the same minutes give three times the updates. In one
    # run each, side by side, 10 epochs: T=9 P1 74.9 mm, T=13 79.0 mm, T=27
    # 111.7 mm (docs/performance.md, "Training the demo").
    config.model.num_frames = 9
    config.model.dim = 32
    config.model.depth = 1
    config.model.drop_path_rate = 0.0
    config.data.pkl_path = str(DEMO_PICKLE)
    config.batch_size = 8
    config.num_epochs = 7
    config.log_every_steps = 20
    # About 1400 steps, not the release's 300 epochs: a higher learning rate
    # that decays faster (x0.75 per epoch instead of x0.99).
    config.optimizer.learning_rate = 3e-3
    config.optimizer.lr_decay = 0.75
    config.lock()
    return config
