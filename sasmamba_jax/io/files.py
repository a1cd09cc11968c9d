"""Writing so that a crash never leaves a half-written file: stage beside the target, then rename."""

import os
import shutil
import tempfile


def current_umask() -> int:
    """The process's file-creation mask (os.umask can only be read by setting it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replace_directory(new: str, target: str) -> None:
    """Puts directory ``new`` at ``target``, replacing what is there, never leaving neither."""
    if not os.path.exists(target):
        os.rename(new, target)
        return
    retired = tempfile.mkdtemp(dir=os.path.dirname(target), prefix=f".{os.path.basename(target)}.old-")
    os.rmdir(retired)
    os.rename(target, retired)
    os.rename(new, target)
    shutil.rmtree(retired)
