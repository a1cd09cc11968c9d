"""Data files are read without running code from them.

The readers of MotionBERT's pickle, the release's per-clip pickles and
P-STMO's npz files admit numpy arrays and plain containers only. A hostile
file (its ``__reduce__`` would create a marker file) is refused with one line
naming the file and the global, and the marker never appears.
"""

import io
import os
import pickle

import numpy as np
import pytest
from sasmamba_jax.configs import demo

from sasmamba_jax.data import h36m, mpi3dhp, safe_pickle

# What every content of the formats we read may be made of.
ARRAYS = [
    np.arange(6, dtype=np.float32).reshape(2, 3),
    np.zeros((2, 3), np.float64, order="F"),
    np.array(["54138969", "55011271"]),
    np.array([b"raw"]),
    np.array(["Directions", 3], dtype=object),
    np.zeros(2, [("a", "<i4"), ("b", "<U3")]),
    np.float64(4.5),
    np.int64(7),
]


def _assert_same(a, b):
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    else:
        assert a == b


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_numpy_arrays_and_plain_containers_round_trip(protocol):
    content = {"arrays": ARRAYS, "nested": ({"fps": 50, "name": "TS1"}, [1.5, None, True]), "b": b"\x00"}
    _assert_same(safe_pickle.load(io.BytesIO(pickle.dumps(content, protocol=protocol))), content)


def test_pickles_written_by_numpy_1_load():
    """numpy 1.x named its reconstructors numpy.core.*; numpy 2 keeps them under numpy._core."""
    written_by_numpy_1 = pickle.dumps(ARRAYS, protocol=0).replace(b"numpy._core", b"numpy.core")
    assert b"numpy.core.multiarray\n_reconstruct" in written_by_numpy_1
    _assert_same(safe_pickle.load(io.BytesIO(written_by_numpy_1)), ARRAYS)


def test_the_demo_pickle_reads_as_pickle_reads_it():
    with open(demo.DEMO_PICKLE, "rb") as f:
        expected = pickle.load(f)
    _assert_same(safe_pickle.load_file(demo.DEMO_PICKLE), expected)


class _Hostile:
    """Unpickled by ``pickle.load``, it runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


REFUSED = f"{os.system.__module__}.system"


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "the_file_ran_code"


def test_the_hostile_object_runs_code_under_plain_pickle(marker):
    """The control: what the readers refuse really is an attack."""
    pickle.loads(pickle.dumps(_Hostile(marker)))
    assert marker.exists()


def _assert_refused(error, path, marker):
    message = str(error.value)
    assert "\n" not in message
    assert str(path) in message and f"refused to unpickle {REFUSED}" in message
    assert not marker.exists()


def test_hostile_h36m_pickle_is_refused(tmp_path, marker):
    path = tmp_path / "h36m.pkl"
    path.write_bytes(pickle.dumps({"train": {"joint_2d": np.zeros(3)}, "test": {"source": _Hostile(marker)}}))
    with pytest.raises(safe_pickle.UnsafeDataError) as error:
        h36m.load_h36m(str(path), 27)
    _assert_refused(error, path, marker)


def test_hostile_clip_is_refused(tmp_path, marker):
    folder = tmp_path / "train"
    folder.mkdir()
    clip = {"data_input": np.zeros((27, 17, 3)), "data_label": np.zeros((27, 17, 3))}
    (folder / "00000000.pkl").write_bytes(pickle.dumps(clip))
    (folder / "00000001.pkl").write_bytes(pickle.dumps({**clip, "data_label": _Hostile(marker)}))
    with pytest.raises(safe_pickle.UnsafeDataError) as error:
        h36m.load_clip_folder(str(tmp_path), "train")
    _assert_refused(error, folder / "00000001.pkl", marker)


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_hostile_npz_is_refused(tmp_path, marker, save):
    path = tmp_path / "data_test_3dhp.npz"
    hostile = np.empty((), dtype=object)
    hostile[()] = {"TS1": {"data_2d": np.zeros((5, 17, 2)), "valid": _Hostile(marker)}}
    save(path, data=hostile)
    with pytest.raises(safe_pickle.UnsafeDataError) as error:
        mpi3dhp.read_3dhp_npz(str(path), "test")
    _assert_refused(error, path, marker)


def test_npz_arrays_without_objects_are_read_without_unpickling(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, a=ARRAYS[0], b=ARRAYS[2], c=ARRAYS[5])
    arrays = safe_pickle.load_npz(path)
    assert list(arrays) == ["a", "b", "c"]
    for name, expected in zip("abc", (ARRAYS[0], ARRAYS[2], ARRAYS[5])):
        _assert_same(arrays[name], expected)


def test_a_pickle_global_that_is_not_reconstruction_is_refused_even_from_numpy():
    """numpy itself holds callables with side effects (np.save writes files): only reconstruction passes."""
    with pytest.raises(safe_pickle.RefusedGlobalError, match="refused to unpickle numpy.save"):
        safe_pickle.load(io.BytesIO(pickle.dumps(np.save)))
