"""The Human3.6M 17-joint skeleton shared by the model, data, metrics and plots.

Joint order is the one of VideoPose3D / MotionBERT, which the PyTorch release
uses everywhere.
"""

NUM_JOINTS = 17
ROOT = 0

JOINT_NAMES = (
    "pelvis",
    "right_hip",
    "right_knee",
    "right_ankle",
    "left_hip",
    "left_knee",
    "left_ankle",
    "spine",
    "thorax",
    "neck",
    "head",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
)

# Parent of each joint in the kinematic tree; the root has none.
PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15)
BONES = tuple((parent, child) for child, parent in enumerate(PARENTS) if parent >= 0)

LEFT_JOINTS = (4, 5, 6, 11, 12, 13)
RIGHT_JOINTS = (1, 2, 3, 14, 15, 16)

# Permutation that mirrors a pose: left and right joints trade places.
FLIP_PERMUTATION = tuple(
    {**dict(zip(LEFT_JOINTS, RIGHT_JOINTS)), **dict(zip(RIGHT_JOINTS, LEFT_JOINTS))}.get(j, j)
    for j in range(NUM_JOINTS)
)
