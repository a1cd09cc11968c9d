"""Reading pickled data files without running code from them.

``pickle.load`` calls whatever callable a file names (``os.system`` included),
so a dataset downloaded from a mirror could run any command while being read.
The data formats we read (MotionBERT's pickle, the release's per-clip pickles,
P-STMO's npz files) hold only numpy arrays and plain containers, so the
unpickler here admits the globals that rebuild numpy arrays, dtypes and
scalars and refuses every other one before importing it. Dicts, lists,
tuples, strings, bytes and numbers need no global.
"""

import os
import pickle
import zipfile
from typing import Any, BinaryIO

import numpy as np

# (module, name) of every callable a data file may name. numpy 1.x wrote its
# reconstructors under numpy.core, numpy 2 under numpy._core.
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        # Protocol 5 rebuilds an array from its out-of-band buffer.
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        # Protocol 2 writes bytes (an array's buffer) as _codecs.encode(str, "latin1").
        ("_codecs", "encode"),
    }
)
_NUMPY_1_MODULES = {
    "numpy.core.multiarray": "numpy._core.multiarray",
    "numpy.core.numeric": "numpy._core.numeric",
}

# What can go wrong unpickling a truncated or foreign file.
_UNREADABLE = (
    pickle.UnpicklingError,
    EOFError,
    AttributeError,
    ImportError,
    IndexError,
    KeyError,
    TypeError,
    ValueError,
)


class RefusedGlobalError(pickle.UnpicklingError):
    """A pickle names a callable outside the numpy / plain-container allowlist."""

    def __init__(self, module: str, name: str):
        super().__init__(f"refused to unpickle {module}.{name}")
        self.module = module
        self.name = name


class UnsafeDataError(ValueError):
    """A data file asks to run code that is not numpy's array reconstruction."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise RefusedGlobalError(module, name)
        return super().find_class(_NUMPY_1_MODULES.get(module, module), name)


def load(file: BinaryIO) -> Any:
    """``pickle.load`` that admits only numpy arrays, dtypes, scalars and plain containers.

    Raises:
        RefusedGlobalError: the pickle names any other global.
    """
    return _NumpyOnlyUnpickler(file).load()


def _refusal(path: str, error: RefusedGlobalError) -> UnsafeDataError:
    return UnsafeDataError(
        f"{path}: {error}: a data file may hold only numpy arrays and plain containers; it was not loaded"
    )


def load_file(path: str | os.PathLike) -> Any:
    """The content of a pickle file, read with ``load``.

    Raises:
        FileNotFoundError: no such file.
        UnsafeDataError: the file names a refused global (nothing of it ran).
        ValueError: the file is not a readable pickle.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            return load(f)
    except RefusedGlobalError as error:
        raise _refusal(path, error) from None
    except _UNREADABLE as error:
        raise ValueError(f"{path} is not a readable pickle: {error!r}") from None


_NPY_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def _read_npy(archive: zipfile.ZipFile, member: str, where: str) -> np.ndarray:
    """One array of an npz archive; object arrays are unpickled with ``load``."""
    with archive.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version not in _NPY_HEADER_READERS:
            raise ValueError(f"{where}: unsupported .npy format version {version}")
        shape, _, dtype = _NPY_HEADER_READERS[version](f)
        if dtype.hasobject:
            # np.save writes an object array as one pickle of the array after the header.
            array = load(f)
            if not isinstance(array, np.ndarray) or array.shape != shape:
                raise ValueError(f"{where}: the pickled object array does not match its header {shape}")
            return array
    with archive.open(member) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, by name, object arrays read with ``load``.

    Raises:
        FileNotFoundError: no such file.
        UnsafeDataError: an object array names a refused global (nothing of it ran).
        ValueError: the file is not a readable npz archive.
    """
    path = os.fspath(path)
    try:
        with zipfile.ZipFile(path) as archive:
            return {
                member.removesuffix(".npy"): _read_npy(archive, member, f"{path} [{member}]")
                for member in archive.namelist()
                if member.endswith(".npy")
            }
    except FileNotFoundError:
        raise
    except RefusedGlobalError as error:
        raise _refusal(path, error) from None
    except (*_UNREADABLE, OSError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path} is not a readable npz file: {error!r}") from None
