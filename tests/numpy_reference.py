"""Plain numpy float64 reference implementations of the ops in ``sasmamba_jax.ops``.

Written from the definitions (REFERENCE_MODEL.md sections 2 to 6 and
torchvision's ``deform_conv2d`` bilinear rules), with explicit loops, so the
tests compare the JAX ops against an implementation that shares no code with
them. No JAX here.

Dimension letters: B batch, L sequence length, K scan directions, E channels,
N state size, T frames, J joints, H and W a grid, k kernel size.
"""

import math

import numpy as np

# Stride-2 and stride-3 anchor joints (REFERENCE_MODEL.md section 3).
STRIDE2_ANCHORS = (0, 0, 2, 2, 4, 4, 6, 6, 8, 8, 10, 10, 12, 12, 14, 14, 16)
STRIDE3_ANCHORS = (0, 0, 0, 3, 3, 3, 6, 6, 6, 9, 9, 9, 12, 12, 12, 15, 15)


def softplus(x: np.ndarray) -> np.ndarray:
    """log(1 + exp(x)) without overflow."""
    return np.logaddexp(0.0, x)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def selective_scan(u, delta, A, B, C, D, delta_bias):
    """Forward selective scan, one time step at a time.

    Args:
        u: (B, L, K, E) inputs.
        delta: (B, L, K, E) step sizes before softplus.
        A: (K, E, N) state diagonals.
        B: (B, L, K, N) input projections.
        C: (B, L, K, N) output projections.
        D: (K, E) skip weights.
        delta_bias: (K, E) step-size bias.

    Returns:
        (B, L, K, E) float64 outputs.
    """
    y, _ = _selective_scan_with_states(u, delta, A, B, C, D, delta_bias)
    return y


def _selective_scan_with_states(u, delta, A, B, C, D, delta_bias):
    """Forward pass that also returns the states h_0 .. h_L, (B, L + 1, K, E, N)."""
    u, delta, A, B, C, D, delta_bias = (np.asarray(t, np.float64) for t in (u, delta, A, B, C, D, delta_bias))
    batch, length, k, e = u.shape
    dt = softplus(delta + delta_bias)
    states = np.zeros((batch, length + 1, k, e, A.shape[-1]))
    y = np.zeros((batch, length, k, e))
    for step in range(length):
        decay = np.exp(dt[:, step, :, :, None] * A)
        drive = (dt[:, step] * u[:, step])[..., None] * B[:, step, :, None, :]
        states[:, step + 1] = decay * states[:, step] + drive
        y[:, step] = np.einsum("bken,bkn->bke", states[:, step + 1], C[:, step])
    return y + D * u, states


def selective_scan_vjp(u, delta, A, B, C, D, delta_bias, grad_y):
    """Hand-derived backward pass of ``selective_scan``.

    With lambda_l = dLoss/dh_l, the adjoint runs backwards in time:
    lambda_l = grad_y_l * C_l + exp(dt_{l+1} A) * lambda_{l+1}, lambda_{L+1} = 0,
    and every input's gradient is read off lambda_l and the forward states.

    Args:
        u, delta, A, B, C, D, delta_bias: as for ``selective_scan``.
        grad_y: (B, L, K, E) cotangent of the output.

    Returns:
        Dict of float64 gradients keyed "u", "delta", "A", "B", "C", "D",
        "delta_bias", each shaped like its input.
    """
    _, states = _selective_scan_with_states(u, delta, A, B, C, D, delta_bias)
    u, delta, A, B, C, D, delta_bias, grad_y = (
        np.asarray(t, np.float64) for t in (u, delta, A, B, C, D, delta_bias, grad_y)
    )
    length = u.shape[1]
    pre_softplus = delta + delta_bias
    dt = softplus(pre_softplus)
    grad_u = grad_y * D
    grad_dt = np.zeros_like(dt)
    grad_A = np.zeros_like(A)
    grad_B = np.zeros_like(B)
    grad_C = np.zeros_like(C)
    adjoint = np.zeros_like(states[:, 0])
    for step in reversed(range(length)):
        h_prev, h = states[:, step], states[:, step + 1]
        grad_C[:, step] = np.einsum("bke,bken->bkn", grad_y[:, step], h)
        adjoint = adjoint + grad_y[:, step, :, :, None] * C[:, step, :, None, :]
        decay = np.exp(dt[:, step, :, :, None] * A)
        # d h_l / d decay_l = h_{l-1};  d decay_l / d dt_l = A * decay_l.
        grad_decay = adjoint * h_prev
        grad_A += np.sum(grad_decay * decay * dt[:, step, :, :, None], axis=0)
        dt_u = dt[:, step] * u[:, step]
        grad_B[:, step] = np.einsum("bken,bke->bkn", adjoint, dt_u)
        adjoint_dot_b = np.einsum("bken,bkn->bke", adjoint, B[:, step])
        grad_u[:, step] += adjoint_dot_b * dt[:, step]
        grad_dt[:, step] = np.sum(grad_decay * decay * A, axis=-1) + adjoint_dot_b * u[:, step]
        adjoint = adjoint * decay
    grad_delta = grad_dt * sigmoid(pre_softplus)
    return {
        "u": grad_u,
        "delta": grad_delta,
        "A": grad_A,
        "B": grad_B,
        "C": grad_C,
        "D": np.sum(grad_y * u, axis=(0, 1)),
        "delta_bias": np.sum(grad_delta, axis=(0, 1)),
    }


def stride_scan(x):
    """The four stride-scan sequences, built element by element.

    Args:
        x: (B, T, J, E), J = 17.

    Returns:
        (B, T * J, 4, E) float64 sequences.
    """
    x = np.asarray(x, np.float64)
    batch, frames, joints, channels = x.shape
    length = frames * joints
    out = np.zeros((batch, length, 4, channels))
    for t in range(frames):
        for j in range(joints):
            merged = x[:, t, j] + x[:, t, STRIDE2_ANCHORS[j]] + x[:, t, STRIDE3_ANCHORS[j]]
            frame_major = t * joints + j
            joint_major = j * frames + t
            out[:, frame_major, 0] = merged
            out[:, joint_major, 1] = x[:, t, j]
            out[:, length - 1 - frame_major, 2] = merged
            out[:, length - 1 - joint_major, 3] = x[:, t, j]
    return out


def stride_merge(y, num_frames):
    """Adds four scanned sequences back onto the (T, J) grid, element by element.

    Args:
        y: (B, T * J, 4, E).
        num_frames: T.

    Returns:
        (B, T, J, E) float64 map.
    """
    y = np.asarray(y, np.float64)
    batch, length, _, channels = y.shape
    joints = length // num_frames
    out = np.zeros((batch, num_frames, joints, channels))
    for t in range(num_frames):
        for j in range(joints):
            frame_major = t * joints + j
            joint_major = j * num_frames + t
            out[:, t, j] = (
                y[:, frame_major, 0]
                + y[:, length - 1 - frame_major, 2]
                + y[:, joint_major, 1]
                + y[:, length - 1 - joint_major, 3]
            )
    return out


def stride_scan_vjp(grad, num_frames):
    """Exact adjoint of ``stride_scan``: scatters the cotangent through every gather.

    Args:
        grad: (B, T * J, 4, E) cotangent of the sequences.
        num_frames: T.

    Returns:
        (B, T, J, E) float64 gradient of x.
    """
    grad = np.asarray(grad, np.float64)
    batch, length, _, channels = grad.shape
    joints = length // num_frames
    out = np.zeros((batch, num_frames, joints, channels))
    for t in range(num_frames):
        for j in range(joints):
            frame_major = t * joints + j
            joint_major = j * num_frames + t
            grad_merged = grad[:, frame_major, 0] + grad[:, length - 1 - frame_major, 2]
            out[:, t, j] += grad_merged
            out[:, t, STRIDE2_ANCHORS[j]] += grad_merged
            out[:, t, STRIDE3_ANCHORS[j]] += grad_merged
            out[:, t, j] += grad[:, joint_major, 1] + grad[:, length - 1 - joint_major, 3]
    return out


def bilinear_sample(image, row, col):
    """torchvision's deformable-conv bilinear read of one (H, W) plane at (row, col).

    A point with row <= -1, row >= H, col <= -1 or col >= W reads 0; otherwise
    each of its four integer corners contributes only if it lies in the grid.
    """
    height, width = image.shape
    if row <= -1 or row >= height or col <= -1 or col >= width:
        return 0.0
    row_low, col_low = math.floor(row), math.floor(col)
    frac_row, frac_col = row - row_low, col - col_low
    value = 0.0
    for corner_row, weight_row in ((row_low, 1 - frac_row), (row_low + 1, frac_row)):
        for corner_col, weight_col in ((col_low, 1 - frac_col), (col_low + 1, frac_col)):
            if 0 <= corner_row < height and 0 <= corner_col < width:
                value += weight_row * weight_col * image[corner_row, corner_col]
    return value


def deform_conv2d_depthwise(x, offsets, weight, bias):
    """Depthwise deformable convolution, stride 1, padding (k - 1) // 2, one offset group.

    Args:
        x: (B, H, W, E) input.
        offsets: (B, H, W, 2 * k * k), (dy, dx) per tap, taps row-major.
        weight: (k, k, E).
        bias: (E,).

    Returns:
        (B, H, W, E) float64 output.
    """
    batch, height, width, channels = np.shape(x)
    out = np.zeros((batch, height, width, channels))
    for b in range(batch):
        for h in range(height):
            for w in range(width):
                out[b, h, w] = deform_conv2d_depthwise_pixel(x, offsets, weight, bias, b, h, w)
    return out


def deform_conv2d_depthwise_pixel(x, offsets, weight, bias, b, h, w):
    """One output position (b, h, w) of ``deform_conv2d_depthwise``, (E,) float64.

    It reads offsets[b, h, w] only, which lets finite differences of the
    offsets evaluate a single position.
    """
    x, offsets, weight, bias = (np.asarray(t, np.float64) for t in (x, offsets, weight, bias))
    k = weight.shape[0]
    pad = (k - 1) // 2
    out = bias.copy()
    for a in range(k):
        for c in range(k):
            tap = a * k + c
            row = h - pad + a + offsets[b, h, w, 2 * tap]
            col = w - pad + c + offsets[b, h, w, 2 * tap + 1]
            for e in range(x.shape[-1]):
                out[e] += weight[a, c, e] * bilinear_sample(x[b, :, :, e], row, col)
    return out


def conv2d(x, kernel, pads):
    """(B, H, W, C_in) x (kh, kw, C_in, C_out), stride 1, zero padding ((top, bottom), (left, right))."""
    padded = np.pad(x, ((0, 0), *pads, (0, 0)))
    kh, kw = kernel.shape[:2]
    height, width = padded.shape[1] - kh + 1, padded.shape[2] - kw + 1
    y = np.zeros((x.shape[0], height, width, kernel.shape[3]), np.float64)
    for i in range(kh):
        for j in range(kw):
            y += padded[:, i : i + height, j : j + width] @ kernel[i, j]
    return y


def conv2d_vjp(x, kernel, pads, grad_y):
    """(grad_x, grad_kernel) of ``conv2d``: every output's gradient sent back to the inputs it read."""
    padded_grad = np.zeros((x.shape[0], x.shape[1] + sum(pads[0]), x.shape[2] + sum(pads[1]), x.shape[3]))
    padded = np.pad(x, ((0, 0), *pads, (0, 0)))
    grad_kernel = np.zeros(kernel.shape, np.float64)
    height, width = grad_y.shape[1:3]
    for i in range(kernel.shape[0]):
        for j in range(kernel.shape[1]):
            padded_grad[:, i : i + height, j : j + width] += grad_y @ kernel[i, j].T
            grad_kernel[i, j] = np.einsum("bhwc,bhwo->co", padded[:, i : i + height, j : j + width], grad_y)
    (top, _), (left, _) = pads
    grad_x = padded_grad[:, top : top + x.shape[1], left : left + x.shape[2]]
    return grad_x, grad_kernel
