"""Device mesh and the one rule that places every array of a training run.

Mesh axes:

* ``data``: pure data parallelism; parameters are replicated along it.
* ``fsdp``: data parallelism whose replicas also split the parameters and
  optimizer state (ZeRO-3 / FSDP style): each array is cut along one of its
  dimensions and gathered when a layer needs it.

Batches are split along both axes. This is ``jax.jit`` with ``NamedSharding``
annotations, the modern form of pjit: no ``pmap`` anywhere.
"""

import warnings
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXES = ("data", "fsdp")
# Arrays smaller than this stay replicated: cutting them saves little memory
# and costs a gather per use.
MIN_SHARDED_SIZE = 2**14


def make_mesh(mesh_config: ml_collections.ConfigDict, devices=None) -> Mesh:
    """A ("data", "fsdp") mesh over all (or the given) devices.

    Args:
        mesh_config: sizes ``data`` and ``fsdp``; one of them may be -1 for
            "the rest of the devices".
        devices: defaults to ``jax.devices()``.
    """
    devices = np.asarray(jax.devices() if devices is None else devices)
    sizes = [mesh_config.data, mesh_config.fsdp]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got data={sizes[0]}, fsdp={sizes[1]}")
    if -1 in sizes:
        known = int(np.prod([s for s in sizes if s != -1]))
        if devices.size % known:
            raise ValueError(f"{devices.size} devices cannot be split into mesh axes {sizes}")
        sizes[sizes.index(-1)] = devices.size // known
    used = int(np.prod(sizes))
    if used > devices.size:
        raise ValueError(f"mesh data={sizes[0]} x fsdp={sizes[1]} needs {used} devices, {devices.size} exist")
    if used < devices.size:
        warnings.warn(
            f"mesh data={sizes[0]} x fsdp={sizes[1]} uses {used} of {devices.size} devices", stacklevel=2
        )
    return Mesh(devices.flat[:used].reshape(sizes), DATA_AXES)


def array_spec(shape: tuple[int, ...], fsdp_size: int) -> PartitionSpec:
    """Where one parameter or optimizer-state array lives.

    The largest dimension that the ``fsdp`` axis divides is cut along it;
    small arrays and arrays with no such dimension are replicated.
    """
    if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < MIN_SHARDED_SIZE:
        return PartitionSpec()
    candidates = [d for d in np.argsort(shape)[::-1] if shape[d] % fsdp_size == 0]
    if not candidates:
        return PartitionSpec()
    # No trailing Nones: jit writes its outputs' specs without them, and an
    # input spec that differs only by them compiles the step a second time.
    spec = [None] * (candidates[0] + 1)
    spec[candidates[0]] = "fsdp"
    return PartitionSpec(*spec)


def default_mesh(devices=None) -> Mesh:
    """Every (or every given) device on the ``data`` axis: where a model goes when no config names a mesh."""
    return make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1)), devices)


def tree_shardings(mesh: Mesh, tree):
    """NamedShardings for every array leaf of a (possibly abstract) pytree."""
    fsdp_size = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, array_spec(np.shape(x), fsdp_size)), tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches: the leading (batch) axis split over every device."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXES))


def place_params(params, mesh: Mesh):
    """A model's parameters on ``mesh`` by ``array_spec``: replicated unless the mesh has an ``fsdp`` axis.

    Arrays already placed so stay where they are; any other value (numpy, or a
    jax array on other devices) must be the same on every process.
    """

    def place(value, sharding):
        if isinstance(value, jax.Array) and value.sharding == sharding:
            return value
        return _put_host_value(jax.device_get(value), sharding)

    return jax.tree.map(place, params, tree_shardings(mesh, params))


def params_mesh(params) -> Mesh:
    """The ("data", "fsdp") mesh a model's parameters live on.

    A one-device mesh for parameters on one device, or on the host (numpy
    arrays, which jit puts on the default device).

    Raises:
        ValueError: the parameters are spread over devices in another way
            (place them with ``place_params``).
    """
    shardings = [leaf.sharding for leaf in jax.tree.leaves(params) if isinstance(leaf, jax.Array)]
    meshes = {s.mesh for s in shardings if isinstance(s, NamedSharding)}
    if len(meshes) == 1 and all(isinstance(s, NamedSharding) for s in shardings):
        (mesh,) = meshes
        if mesh.axis_names == DATA_AXES:
            return mesh
    devices = {device for s in shardings for device in s.device_set} or {jax.devices()[0]}
    if len(devices) == 1:
        return Mesh(np.asarray(list(devices)).reshape(1, 1), DATA_AXES)
    raise ValueError(
        f"the model's parameters are spread over {len(devices)} devices without one {DATA_AXES} mesh; "
        "place them with sharding.place_params"
    )


def put_replicated_host_tree(tree, shardings):
    """Places host values, identical on every process, onto global shardings."""
    return jax.tree.map(_put_host_value, tree, shardings)


def _put_host_value(value, sharding: NamedSharding) -> jax.Array:
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def restore_target(abstract: Any, mesh: Mesh) -> Any:
    """Shapes, dtypes and ``place_params``' shardings on ``mesh`` of an abstract tree."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        abstract,
        tree_shardings(mesh, abstract),
    )
