"""The release's evaluation protocols, on model outputs already computed.

Human3.6M (`train.py: evaluate` of the release): clip predictions are mapped
back to millimetres per frame, frames are scored once however many clips
cover them, and errors are averaged per action and then over actions.
MPI-INF-3DHP (`train_3dhp.py: evaluate` plus the dataset's test script): the
centre frame of each valid-frame window is scored.

Test-time flip averaging is the caller's job: average the model's output on
the inputs with `flip_pose` of its output on the flipped inputs.

Letters: M clips, K windows, N frames, T frames per clip, J = 17 joints.
All errors are in millimetres.
"""

import numpy as np

from sasmamba_jax import skeleton
from sasmamba_jax.data import mpi3dhp
from sasmamba_jax.evaluate import metrics

# Test sequences the release leaves out of the Human3.6M evaluation (as
# MotionBERT does).
SKIPPED_TEST_SEQUENCES = (
    "s_09_act_05_subact_02",
    "s_09_act_10_subact_02",
    "s_09_act_13_subact_01",
)
# Sources are '<sequence>_ca_<two-digit camera>'.
_CAMERA_SUFFIX_LENGTH = len("_ca_01")


def _check_predictions(predictions, expected_shape):
    """Returns `predictions` as float64, checking their shape."""
    predictions = np.asarray(predictions, np.float64)
    if predictions.shape != tuple(expected_shape):
        raise ValueError(f"predictions must have shape {tuple(expected_shape)}, got {predictions.shape}")
    return predictions


def _last_occurrences(frames):
    """Positions of the last occurrence of each distinct value in `frames` (T,)."""
    reversed_first = np.unique(frames[::-1], return_index=True)[1]
    return len(frames) - 1 - reversed_first


def millimetres_per_unit(data):
    """(M, T): the factor taking root-relative test-clip predictions to millimetres.

    The release de-normalises x and y with an offset, scales by the 2.5d
    factor and subtracts the root: the offset cancels, leaving res_w / 2 *
    factor per clip frame.
    """
    return data.test_clip_widths[:, None] / 2 * data.test_factors[data.test_clip_frames]


def _clip_errors_mm(predictions, data):
    """Per-clip frame errors: joint (M, T, J), P-MPJPE (M, T), accel (M, T - 2)."""
    num_clips, num_frames, num_joints, _ = predictions.shape
    pred = predictions.copy()
    pred[:, :, skeleton.ROOT] = 0
    pred = pred * millimetres_per_unit(data)[:, :, None, None]
    gt = data.test_joints_mm[data.test_clip_frames].astype(np.float64)
    gt -= gt[:, :, skeleton.ROOT : skeleton.ROOT + 1]

    flat_pred = pred.reshape(-1, num_joints, 3)
    flat_gt = gt.reshape(-1, num_joints, 3)
    joint_errors = metrics.per_joint_error(flat_pred, flat_gt).reshape(num_clips, num_frames, -1)
    p_mpjpe = metrics.p_mpjpe(flat_pred, flat_gt).reshape(num_clips, num_frames)
    accel = np.stack([metrics.acceleration_error(p, g) for p, g in zip(pred, gt)])
    return joint_errors, p_mpjpe, accel


def evaluate_h36m(predictions, data):
    """Scores Human3.6M test-clip predictions with the release's protocol.

    Steps, in the release's order:
    1. Set the root joint of the (normalised, root-relative) predictions to 0.
    2. De-normalise with the clip's camera width (scale res_w / 2) and
       multiply each frame by its `2.5d_factor`; make root-relative.
    3. Compare with the frame's `joints_2.5d_image`, made root-relative: per
       frame MPJPE, P-MPJPE, per-joint errors, and per clip the acceleration
       error of frames t, t+1, t+2, credited to frame t (the last two frames of
       each clip get 0).
    4. Skip clips whose first frame belongs to `SKIPPED_TEST_SEQUENCES`.
    5. Average each frame's errors over the clips that cover it. A frame that
       appears several times in one (resampled) clip counts once, with the
       errors of its last appearance, as the release's numpy `a[idx] += v`
       does.
    6. Average the frames of each action (the frame's own action), then the
       actions.

    Two deliberate differences, both invisible on the real data: the release
    keeps frames whose summed MPJPE is > 0 (so an exactly perfect frame would
    be dropped); here every covered frame is kept. And an action without any
    scored frame is left out here, where the release would average NaN.

    Args:
      predictions: (M, T, 17, 3) model outputs on `data.test_inputs`, in
        normalised units, root-relative.
      data: an `H36MData`.

    Returns:
      {'p1', 'p2', 'accel': float, 'per_action': {action: {'p1', 'p2',
      'accel'}}, 'per_joint': [17 floats], 'num_frames': int}, errors in mm,
      plain Python numbers.
    """
    predictions = _check_predictions(predictions, data.test_clip_frames.shape + (skeleton.NUM_JOINTS, 3))
    num_frames_total = data.test_factors.shape[0]
    num_clips, clip_length = data.test_clip_frames.shape
    if num_clips == 0:
        raise ValueError("the test split has no clips")
    if clip_length < 3:
        raise ValueError(f"the acceleration error needs clips of >= 3 frames, got {clip_length}")
    joint_errors, p_mpjpe, accel = _clip_errors_mm(predictions, data)

    first_sources = data.test_sources[data.test_clip_frames[:, 0]]
    skipped = np.isin([s[:-_CAMERA_SUFFIX_LENGTH] for s in first_sources], SKIPPED_TEST_SEQUENCES)

    joint_sum = np.zeros((num_frames_total, skeleton.NUM_JOINTS))
    p_mpjpe_sum = np.zeros(num_frames_total)
    accel_sum = np.zeros(num_frames_total)
    coverage = np.zeros(num_frames_total)
    for clip in np.flatnonzero(~skipped):
        frames = data.test_clip_frames[clip]
        last = _last_occurrences(frames)
        joint_sum[frames[last]] += joint_errors[clip, last]
        p_mpjpe_sum[frames[last]] += p_mpjpe[clip, last]
        coverage[frames[last]] += 1
        last_accel = _last_occurrences(frames[:-2])
        accel_sum[frames[last_accel]] += accel[clip, last_accel]

    scored = coverage > 0
    count = coverage[scored]
    per_frame = {
        "joints": joint_sum[scored] / count[:, None],
        "p2": p_mpjpe_sum[scored] / count,
        "accel": accel_sum[scored] / count,
    }
    per_frame["p1"] = per_frame["joints"].mean(axis=1)
    actions = data.test_actions[scored]

    per_action, per_action_joints = {}, []
    for action in sorted(set(actions)):
        in_action = actions == action
        per_action[action.item()] = {
            key: float(per_frame[key][in_action].mean()) for key in ("p1", "p2", "accel")
        }
        per_action_joints.append(per_frame["joints"][in_action].mean(axis=0))
    if not per_action:
        raise ValueError("no test frame left to score (all clips skipped?)")
    return {
        **{key: float(np.mean([a[key] for a in per_action.values()])) for key in ("p1", "p2", "accel")},
        "per_action": per_action,
        "per_joint": [float(e) for e in np.mean(per_action_joints, axis=0)],
        "num_frames": int(scored.sum()),
    }


def format_results_table(results):
    """A text table of `evaluate_h36m` results, one row per action.

    Args:
      results: the dict returned by `evaluate_h36m`.

    Returns:
      The table, with a final 'Average' row (the mean over actions).
    """
    name_width = max(len(str(name)) for name in ["Average", *results["per_action"]])
    header = f"{'Action':<{name_width}}  {'P1 (mm)':>8}  {'P2 (mm)':>8}  {'Accel (mm)':>10}"
    rows = [header, "-" * len(header)]
    lines = [*results["per_action"].items(), ("Average", results)]
    for index, (name, errors) in enumerate(lines):
        if index == len(lines) - 1:
            rows.append("-" * len(header))
        rows.append(
            f"{str(name):<{name_width}}  {errors['p1']:8.2f}  {errors['p2']:8.2f}  {errors['accel']:10.2f}"
        )
    return "\n".join(rows)


def _score_3dhp(pred_mm, target_mm, joints):
    """PCK and AUC (percent) and MPJPE of the frames of one group."""
    return {
        "pck": float(100 * metrics.pck(pred_mm, target_mm, 150.0, joints=joints).mean()),
        "auc": float(100 * metrics.auc(pred_mm, target_mm, joints=joints).mean()),
        "p1": float(metrics.mpjpe(pred_mm, target_mm).mean()),
        "num_frames": int(pred_mm.shape[0]),
    }


def evaluate_3dhp(predictions, data, joints=metrics.MPI_INF_3DHP_PCK_JOINTS):
    """Scores MPI-INF-3DHP test predictions with the release's protocol.

    Only the centre frame of each window (one window per valid test frame) is
    scored: its root joint (14) is set to 0, it is de-normalised with the
    sequence's camera width (scale res_w / 2; 1920 for TS5 and TS6, 2048
    otherwise) and compared with the root-relative millimetre ground truth.
    P1 is the MPJPE over all 17 joints, pooled over frames, as the release's
    `train_3dhp.py` prints it. PCK (error < 150 mm) and AUC (mean PCK over
    0, 5, ..., 150 mm) follow the dataset's `mpii_compute_3d_pck.m` as shipped
    with P-STMO, which the release relies on: joints 0-13, all frames of all
    sequences pooled, in percent.

    Args:
      predictions: (K, T, 17, 3) model outputs on `data.test_inputs`,
        normalised, root-relative (flip averaging with
        `mpi3dhp.FLIP_PERMUTATION` done by the caller).
      data: an `MPI3DHPData`.
      joints: joints scored by PCK and AUC.

    Returns:
      {'pck', 'auc', 'p1': float, 'num_frames': int, 'per_sequence':
      {sequence: {'pck', 'auc', 'p1', 'num_frames'}}}, plain Python numbers.
    """
    predictions = _check_predictions(predictions, data.test_inputs.shape[:2] + (mpi3dhp.NUM_JOINTS, 3))
    if predictions.shape[0] == 0:
        raise ValueError("no test window to score")
    centre = (predictions.shape[1] - 1) // 2
    pred = predictions[:, centre].copy()
    pred[:, mpi3dhp.ROOT_JOINT] = 0
    pred_mm = pred * (data.test_widths[:, None, None] / 2)
    target_mm = data.test_targets_mm.astype(np.float64)

    results = _score_3dhp(pred_mm, target_mm, joints)
    results["per_sequence"] = {
        sequence: _score_3dhp(
            pred_mm[data.test_sequences == sequence], target_mm[data.test_sequences == sequence], joints
        )
        for sequence in dict.fromkeys(data.test_sequences)
    }
    return results
