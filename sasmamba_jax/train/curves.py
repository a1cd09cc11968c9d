"""A training run's curves (loss, test P1 and P2 against step) from its JSON-lines metrics, as a PNG.

Drawn on an Agg canvas, never through ``pyplot``: nothing here needs a display.
"""

import json
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_CURVE_KEYS = {"train/loss": "training loss", "eval/p1": "P1 (MPJPE)", "eval/p2": "P2 (P-MPJPE)"}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_curves(metrics_jsonl_path) -> dict[str, tuple[list[float], list[float]]]:
    """Reads (steps, values) for each key of `_CURVE_KEYS` present in a JSON-lines file."""
    curves = {key: ([], []) for key in _CURVE_KEYS}
    with open(metrics_jsonl_path, encoding="utf-8") as metrics_file:
        for line_number, line in enumerate(metrics_file, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{os.fspath(metrics_jsonl_path)}:{line_number} is not valid JSON: {error}"
                ) from error
            if not isinstance(row, dict) or not _is_number(row.get("step")):
                continue
            for key, (steps, values) in curves.items():
                if _is_number(row.get(key)):
                    steps.append(row["step"])
                    values.append(row[key])
    return {key: curve for key, curve in curves.items() if curve[0]}


def plot_training_curves(
    metrics_jsonl_path: str | os.PathLike, out_png: str | os.PathLike, *, dpi: int = 100
) -> str:
    """Plots training loss and eval P1/P2 (mm) against step, and writes a PNG.

    Each line of the file is a JSON object; rows with a numeric "step" and any
    of "train/loss", "eval/p1", "eval/p2" are used, other keys and rows are
    ignored. The loss gets its own panel (log scale when all values are
    positive) above a P1/P2 panel; a panel whose keys never appear is left out.

    Args:
      metrics_jsonl_path: JSON-lines metrics file.
      out_png: output PNG path.
      dpi: resolution of the PNG.

    Returns:
      `out_png`, as a string.

    Raises:
      ValueError: if a line is not valid JSON or no row is usable.
    """
    curves = _read_curves(metrics_jsonl_path)
    if not curves:
        raise ValueError(
            f"{os.fspath(metrics_jsonl_path)} has no row with a numeric 'step' and any of "
            f"{sorted(_CURVE_KEYS)}"
        )
    panels = [keys for keys in (["train/loss"], ["eval/p1", "eval/p2"]) if any(key in curves for key in keys)]
    figure = Figure(figsize=(7.0, 3.0 * len(panels)), layout="constrained")
    FigureCanvasAgg(figure)
    axes_list = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for axes, keys in zip(axes_list, panels):
        for key in keys:
            if key not in curves:
                continue
            steps, values = curves[key]
            if key == "train/loss":
                axes.plot(steps, values, label=_CURVE_KEYS[key])
                axes.set_ylabel("loss")
                if min(values) > 0:
                    axes.set_yscale("log")
            else:
                best = int(np.argmin(values))
                label = f"{_CURVE_KEYS[key]}, best {values[best]:.2f} mm at step {steps[best]}"
                axes.plot(steps, values, marker="o", markersize=3, label=label)
                axes.set_ylabel("error (mm)")
        axes.grid(alpha=0.3)
        axes.legend()
    axes_list[-1].set_xlabel("step")
    figure.savefig(out_png, format="png", dpi=dpi)
    return os.fspath(out_png)
