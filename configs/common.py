"""The release's training recipe, shared by every config file.

A config file's ``get_config()`` starts from ``base_config()`` and changes what
differs. Keys are locked: a typo on the command line
(``--config.optimizer.learnig_rate=...``) fails instead of being ignored.
"""

import ml_collections
from ml_collections import config_dict


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    # SasMambaConfig fields (sasmamba_jax/model/sasmamba.py). The published small
    # Human3.6M model.
    config.model = ml_collections.ConfigDict(
        dict(
            num_frames=243,
            in_chans=2,
            dim=64,
            depth=5,
            mlp_ratio=2.0,
            ssm_conv=3,
            d_state=16,
            ssm_ratio=2.0,
            drop_path_rate=0.2,
            # "auto" picks the back end measured fastest for the platform:
            # model.sasmamba.DEFAULT_SCAN, written out so that configs import
            # no JAX (tests/test_load_defaults.py checks they agree).
            scan="auto",
            chunk_size=64,
            # "release": the release's backward of the stride scan (what its
            # published weights were trained with); "exact": the true gradient.
            stride_grad="release",
            # Recompute block activations in the backward pass (less memory,
            # about one more forward pass of compute). None: on an
            # accelerator, True only if the step would not fit one chip
            # otherwise (train.memory.resolve_memory_settings; the choice is
            # logged and saved with the config); on CPU False.
            remat=config_dict.placeholder(bool),
        )
    )
    # Compute dtype: "float32" or "bfloat16" (parameters, optimizer state and
    # the scan's state stay float32).
    config.dtype = "float32"
    # Precision of float32 matmuls in training, evaluation and inference
    # (model.precision.MATMUL_PRECISIONS). "default" is the platform's, fastest:
    # one bfloat16 pass on TPU, TF32 on recent NVIDIA GPUs, float32 on CPU.
    # "highest" computes in float32 everywhere, as the release does
    # (docs/guide.md, "Numerics on accelerators").
    config.matmul_precision = "default"

    config.data = ml_collections.ConfigDict(
        dict(
            # "h36m": MotionBERT's pickle (pkl_path); "3dhp": P-STMO's npz
            # files (train_npz, test_npz).
            dataset="h36m",
            pkl_path="",
            # Optional: the release's per-clip folder (e.g. H36M-243, holding
            # train/*.pkl) to train on instead of the pickle's training
            # clips; evaluation still reads pkl_path.
            train_clip_dir="",
            train_npz="",
            test_npz="",
            sample_stride=1,
            # Clip strides; 0 means the release's defaults (T / 3 for
            # training, T for the test split).
            train_stride=0,
            test_stride=0,
            flip=True,
        )
    )

    config.seed = 0
    config.batch_size = 16
    # Gradient accumulation: the batch runs in this many equal microbatches,
    # one at a time, and their gradients are averaged. Same update, less
    # activation memory (B=16, T=243: docs/performance.md). None: on an
    # accelerator, the fewest that fit one chip, tried after remat; on CPU 1.
    config.num_microbatches = config_dict.placeholder(int)
    config.num_epochs = 300
    # Stop after this many steps (-1: run all epochs).
    config.max_steps = -1
    # 0: once per epoch.
    config.checkpoint_every_steps = 0
    config.eval_every_steps = 0
    config.log_every_steps = 50
    config.keep_checkpoints = 3

    config.optimizer = ml_collections.ConfigDict(
        dict(
            learning_rate=5e-4,
            # AdamW's decoupled weight decay, on every parameter (the release).
            weight_decay=0.01,
            # Learning rate multiplied by this after every epoch.
            lr_decay=0.99,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
        )
    )

    config.eval = ml_collections.ConfigDict(
        dict(
            # Average with the prediction for the mirrored input.
            flip=True,
            batch_size=32,
        )
    )

    # Device mesh: sizes of the "data" and "fsdp" axes; -1 takes the rest of
    # the devices. Parameters are sharded along "fsdp", batches along both.
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))

    # Where a run resumes from is its workdir; this only names a starting
    # point for fresh runs (an Orbax model directory or a release .pth).
    config.init_from = config_dict.placeholder(str)
    return config
