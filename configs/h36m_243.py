"""SasMamba on Human3.6M, 243 frames: the release's published H36M model and recipe.

python train.py --config=configs/h36m_243.py --workdir=DIR \
    --config.data.pkl_path=/path/to/h36m_sh_conf_cam_source_final.pkl
"""

from sasmamba_jax.configs import common


def get_config():
    config = common.base_config()
    config.lock()
    return config
