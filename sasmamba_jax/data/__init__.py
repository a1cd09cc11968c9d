"""Dataset readers and the input pipeline."""

from sasmamba_jax.data.augment import flip_pose
from sasmamba_jax.data.h36m import (
    CAMERA_RESOLUTIONS,
    H36MData,
    camera_resolutions,
    denormalize_screen_coordinates,
    load_clip_folder,
    load_h36m,
    normalize_screen_coordinates,
    read_h36m_pickle,
    split_clips,
)
from sasmamba_jax.data.mpi3dhp import MPI3DHPData, load_3dhp
from sasmamba_jax.data.pipeline import ClipLoader, make_global_batch

__all__ = [
    "CAMERA_RESOLUTIONS",
    "ClipLoader",
    "H36MData",
    "MPI3DHPData",
    "camera_resolutions",
    "denormalize_screen_coordinates",
    "flip_pose",
    "load_3dhp",
    "load_clip_folder",
    "load_h36m",
    "make_global_batch",
    "normalize_screen_coordinates",
    "read_h36m_pickle",
    "split_clips",
]
