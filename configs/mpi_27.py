"""SasMamba on MPI-INF-3DHP, 27 frames, (x, y, confidence) input: the release's 3DHP model.

python train.py --config=configs/mpi_27.py --workdir=DIR \
    --config.data.train_npz=data_train_3dhp.npz --config.data.test_npz=data_test_3dhp.npz
"""

from sasmamba_jax.configs import common


def get_config():
    config = common.base_config()
    config.model.num_frames = 27
    config.model.in_chans = 3
    config.data.dataset = "3dhp"
    # The release's 3DHP training clips start every 9 frames.
    config.data.train_stride = 9
    config.lock()
    return config
