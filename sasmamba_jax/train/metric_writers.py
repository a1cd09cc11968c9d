"""Scalar metrics a person can plot: JSON lines and TensorBoard event files."""

import json
import os

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricWriter:
    """Appends ``{"step": s, name: value, ...}`` rows to ``workdir/metrics.jsonl``
    and the same scalars to TensorBoard event files in ``workdir/tensorboard``.

    Only the writing process (process 0 in multi-host runs) should enable it;
    a disabled writer accepts every call and writes nothing. A run resumed
    from step s first drops the rows after s, which the interrupted run wrote
    and the resumed one will write again.
    """

    def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int = 0):
        self._enabled = enabled
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        path = os.path.join(workdir, METRICS_FILE)
        if os.path.exists(path):
            _drop_rows_after(path, resume_step)
        self._jsonl = open(path, "a")
        # Imported here: tensorboardX imports torch where it is installed (1.5 s),
        # which only the writing process needs, once it writes; not train.py's
        # --help, its flag errors, or the other processes of a multi-host run.
        from tensorboardX import SummaryWriter

        self._tensorboard = SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self._enabled:
            return
        row = {"step": int(step), **{name: float(value) for name, value in scalars.items()}}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        for name, value in scalars.items():
            self._tensorboard.add_scalar(name, float(value), int(step))
        self._tensorboard.flush()

    def close(self) -> None:
        if self._enabled:
            self._jsonl.close()
            self._tensorboard.close()


def _drop_rows_after(path: str, step: int) -> None:
    with open(path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(path, "w") as f:
        f.writelines(kept)
