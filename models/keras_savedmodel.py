"""Reading a Keras SavedModel folder (TensorFlow 2) without TensorFlow: its layers, weights and
lookup vocabularies, as numpy.

LAION's NSFW detectors for ViT-B/32 and ViT-L/14 (LAION-AI/CLIP-based-NSFW-Detector) are
autokeras models published as zipped SavedModel folders. TensorFlow is not a dependency of this
project, so this reads the files themselves; every format here is documented by TensorFlow:

    keras_metadata.pb      SavedMetadata protobuf; the node "root" holds the model's JSON config
    variables/variables.index, variables.data-00000-of-00001
                           a tensor bundle: a LevelDB-format table of BundleEntryProto (dtype,
                           shape, shard, offset, size) by checkpoint key, and the raw tensors
    saved_model.pb         SavedModel protobuf: the graph's constants (lookup tables are
                           initialised from them) and the object graph linking them to layers

Only what a layer-by-layer evaluation needs is read: see models/laion_heads.py.
"""

import io
import json
import os
import struct
import zipfile
from collections.abc import Iterator

import numpy as np

from crawl2clip.transforms import files

FILES = ("keras_metadata.pb", "saved_model.pb", "variables/variables.index")
_TABLE_MAGIC = 0xDB4775248B80FB57
# TensorFlow DataType enum values this reader decodes.
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 9: np.int64, 10: np.bool_, 19: np.float16}
DT_STRING = 7


# ---- protobuf wire format ----

def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def message(data: bytes) -> dict[int, list]:
    """A protobuf message's fields: number -> values (ints for varints, bytes otherwise)."""
    fields: dict[int, list] = {}
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def _one(fields: dict, number: int, default=None):
    return fields[number][0] if number in fields else default


def _packed_ints(values: list) -> list[int]:
    """A repeated integer field, packed (bytes) or not (ints)."""
    out = []
    for value in values:
        if isinstance(value, int):
            out.append(value)
            continue
        pos = 0
        while pos < len(value):
            number, pos = _varint(value, pos)
            out.append(number)
    return out


# ---- LevelDB table (the tensor bundle's index) ----

def _block_entries(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    restarts = struct.unpack("<I", block[-4:])[0]
    end = len(block) - 4 - 4 * restarts
    pos, key = 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        length, pos = _varint(block, pos)
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        yield key, block[pos:pos + length]
        pos += length


def _block(data: bytes, handle: bytes) -> bytes:
    offset, pos = _varint(handle, 0)
    size, _ = _varint(handle, pos)
    if data[offset + size] != 0:
        raise ValueError("compressed table blocks are not supported (TensorFlow writes bundles uncompressed)")
    return data[offset:offset + size]


def table_entries(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of a LevelDB-format table file, in key order."""
    if len(data) < 48 or struct.unpack("<Q", data[-8:])[0] != _TABLE_MAGIC:
        raise ValueError("not a LevelDB-format table (bad footer magic)")
    footer = data[-48:-8]
    _, pos = _varint(footer, 0)     # metaindex handle: offset, size
    _, pos = _varint(footer, pos)
    index_offset, pos = _varint(footer, pos)
    index_size, _ = _varint(footer, pos)
    for _, handle in _block_entries(data[index_offset:index_offset + index_size]):
        yield from _block_entries(_block(data, handle))


# ---- tensors ----

def _shape(shape_proto: bytes) -> tuple[int, ...]:
    return tuple(_one(message(dim), 1, 0) for dim in message(shape_proto).get(2, []))


def _string_tensor(raw: bytes, count: int) -> list[bytes]:
    """A bundle's string tensor: varint64 lengths, a 4-byte checksum of them, the bytes."""
    lengths, pos = [], 0
    for _ in range(count):
        length, pos = _varint(raw, pos)
        lengths.append(length)
    pos += 4 if count else 0
    out = []
    for length in lengths:
        out.append(raw[pos:pos + length])
        pos += length
    return out


def read_bundle(index: bytes, shards: list[bytes]) -> dict[str, np.ndarray | list[bytes]]:
    """Every tensor of a tensor bundle (variables.index + its data shards), by checkpoint key."""
    tensors: dict[str, np.ndarray | list[bytes]] = {}
    for key, value in table_entries(index):
        if not key:
            continue  # the bundle header
        entry = message(value)
        if 7 in entry:
            raise ValueError(f"{key.decode()}: sliced (partitioned) variables are not supported")
        dtype = _one(entry, 1, 0)
        shape = _shape(_one(entry, 2, b""))
        offset, size = _one(entry, 4, 0), _one(entry, 5, 0)
        raw = shards[_one(entry, 3, 0)][offset:offset + size]
        count = int(np.prod(shape)) if shape else 1
        if dtype == DT_STRING:
            tensors[key.decode()] = _string_tensor(raw, count)
        elif dtype in _DTYPES:
            tensors[key.decode()] = np.frombuffer(raw, dtype=np.dtype(_DTYPES[dtype]).newbyteorder("<"),
                                                  count=count).reshape(shape)
        # other dtypes (resources, variants) hold nothing a layer evaluation needs
    return tensors


def tensor_proto(data: bytes) -> np.ndarray | list[bytes]:
    """A TensorProto constant (graph `Const` values) as numpy, or a list of bytes for strings."""
    fields = message(data)
    dtype = _one(fields, 1, 0)
    shape = _shape(_one(fields, 2, b""))
    count = int(np.prod(shape)) if shape else 1
    if dtype == DT_STRING:
        return list(fields.get(8, []))
    if dtype not in _DTYPES:
        raise ValueError(f"constant of TensorFlow dtype {dtype} is not supported")
    numpy_type = np.dtype(_DTYPES[dtype]).newbyteorder("<")
    if 4 in fields:
        return np.frombuffer(fields[4][0], dtype=numpy_type, count=count).reshape(shape)
    if dtype == 9:
        values = _packed_ints(fields.get(10, []))
        values = [v - (1 << 64) if v >= 1 << 63 else v for v in values]
        return np.asarray(values if len(values) == count else values * count, np.int64).reshape(shape)
    raise ValueError(f"constant of dtype {dtype} without tensor_content is not supported")


# ---- the SavedModel ----

class KerasSavedModel:
    """A Keras SavedModel folder's model config, variables and object graph, read as numpy."""

    def __init__(self, contents: dict[str, bytes], source: str):
        self.source = source
        missing = [name for name in FILES if name not in contents]
        if missing:
            raise ValueError(f"{source}: not a Keras SavedModel (no {', '.join(missing)})")
        self.config = _model_config(contents["keras_metadata.pb"], source)
        shards = sorted(name for name in contents if name.startswith("variables/variables.data-"))
        self.variables = read_bundle(contents["variables/variables.index"], [contents[name] for name in shards])
        graph = message(message(contents["saved_model.pb"])[2][0])
        self._constants = {_one(node, 1, b"").decode(): node for node in
                           (message(n) for n in message(_one(graph, 2, b"")).get(1, []))
                           if _one(node, 2, b"") == b"Const"}
        objects = message(_one(graph, 7, b""))
        self._nodes = [message(node) for node in objects.get(1, [])]
        self._functions = {_one(entry, 1, b"").decode(): message(_one(entry, 2, b""))
                           for entry in (message(e) for e in objects.get(2, []))}

    def layers(self) -> list[dict]:
        return self.config["config"]["layers"]

    def _children(self, node_id: int) -> dict[str, int]:
        return {_one(ref, 2, b"").decode(): _one(ref, 1, 0)
                for ref in (message(r) for r in self._nodes[node_id].get(1, []))}

    def node(self, *path: str) -> int:
        """The object graph node reached from the root by child names."""
        node_id = 0
        for name in path:
            children = self._children(node_id)
            if name not in children:
                raise ValueError(f"{self.source}: the object graph has no {'/'.join(path)}")
            node_id = children[name]
        return node_id

    def weights_prefix(self, layer_index: int) -> str:
        """The checkpoint prefix of the config's layer `layer_index` (`layer_with_weights-K`)."""
        target = self.node(f"layer-{layer_index}")
        for name, node_id in self._children(0).items():
            if name.startswith("layer_with_weights-") and node_id == target:
                return name
        raise ValueError(f"{self.source}: layer {layer_index} has no weights")

    def variable(self, prefix: str, name: str) -> np.ndarray:
        key = f"{prefix}/{name}/.ATTRIBUTES/VARIABLE_VALUE"
        if key not in self.variables:
            raise ValueError(f"{self.source}: no variable {key}")
        return np.asarray(self.variables[key])

    def lookup_table(self, *path: str) -> dict[bytes, int]:
        """token -> index of a static lookup table (a StringLookup's vocabulary), read from the
        graph constants its initialiser was traced with."""
        initialise = self.node(*path, "lookup_table", "_initialize")
        function = message(_one(self._nodes[initialise], 6, b""))
        concrete = [name.decode() for name in function.get(1, [])]
        if not concrete or concrete[0] not in self._functions:
            raise ValueError(f"{self.source}: {'/'.join(path)} has no traced table initialiser")
        constants = []
        for node_id in _packed_ints(self._functions[concrete[0]].get(2, [])):
            saved = self._nodes[node_id]
            if 9 in saved:  # SavedConstant: the graph operation holding the value
                constants.append(self._constant(_one(message(saved[9][0]), 1, b"").decode()))
        keys = [c for c in constants if isinstance(c, list)]
        values = [c for c in constants if isinstance(c, np.ndarray)]
        if len(keys) != 1 or len(values) != 1 or len(keys[0]) != len(values[0]):
            raise ValueError(f"{self.source}: {'/'.join(path)}: expected one key and one value constant")
        return dict(zip(keys[0], values[0].tolist()))

    def _constant(self, operation: str):
        node = self._constants[operation]
        for attr in node.get(5, []):  # NodeDef.attr: map<string, AttrValue>
            entry = message(attr)
            if _one(entry, 1, b"") == b"value":
                return tensor_proto(_one(message(_one(entry, 2, b"")), 8, b""))
        raise ValueError(f"{self.source}: constant {operation} has no value")


def _model_config(metadata: bytes, source: str) -> dict:
    for node in message(metadata).get(1, []):
        fields = message(node)
        if _one(fields, 3, b"") == b"root":
            return json.loads(_one(fields, 5, b"{}"))
    raise ValueError(f"{source}: keras_metadata.pb has no root model")


def read_saved_model(path: str) -> KerasSavedModel:
    """A SavedModel folder or a .zip of one (as LAION publishes them), local or on any Beam
    filesystem."""
    if path.endswith(".zip"):
        with zipfile.ZipFile(io.BytesIO(files.read_bytes(path))) as archive:
            names = [n for n in archive.namelist() if not n.endswith("/")]
            # the folder inside the archive: the one holding saved_model.pb
            roots = {n[:-len("saved_model.pb")] for n in names if n.endswith("saved_model.pb")}
            if len(roots) != 1:
                raise ValueError(f"{path}: expected one SavedModel folder in the archive, found {len(roots)}")
            root = roots.pop()
            contents = {n[len(root):]: archive.read(n) for n in names if n.startswith(root)}
    else:
        wanted = list(FILES) + ["variables/variables.data-00000-of-00001"]
        contents = {name: files.read_bytes(files.join(path, name)) for name in wanted
                    if files.exists(files.join(path, name))}
        extra = os.path.join(path, "variables")
        if files.is_local(path) and os.path.isdir(extra):
            for name in os.listdir(extra):
                contents.setdefault(f"variables/{name}", files.read_bytes(os.path.join(extra, name)))
    return KerasSavedModel(contents, path)
