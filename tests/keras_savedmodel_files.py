"""Test helper: writes an autokeras model the way TensorFlow saves it (a Keras SavedModel folder),
without TensorFlow, so models/keras_savedmodel.py and models/laion_heads.py can be tested on the
published format. The layout follows LAION's clip_autokeras_nsfw_b32.zip file for file:

    keras_metadata.pb    SavedMetadata: node "root" holds the Functional model's JSON config
    saved_model.pb       SavedModel: graph Const nodes (the lookup tables' keys and values) and
                         the object graph (root -> layer-N / layer_with_weights-K -> ... ->
                         lookup_table -> _initialize -> traced function -> bound constants)
    variables/variables.index, variables.data-00000-of-00001
                         a tensor bundle (LevelDB-format table of BundleEntryProto + raw data)
"""

import json
import os
import struct
import zipfile

import numpy as np


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, value) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    if isinstance(value, str):
        value = value.encode()
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _shape(shape) -> bytes:
    return b"".join(_field(2, _field(1, size)) for size in shape)


def _table(entries: list[tuple[bytes, bytes]]) -> bytes:
    """A LevelDB-format table: one data block, an empty meta-index block, an index block, the footer."""
    def block(items) -> bytes:
        body = b"".join(_varint(0) + _varint(len(k)) + _varint(len(v)) + k + v for k, v in items)
        return body + struct.pack("<II", 0, 1) + b"\x00" + b"\x00\x00\x00\x00"  # restarts [0]; trailer

    data = block(sorted(entries))
    meta = block([])
    index = block([(max(k for k, _ in entries), _varint(0) + _varint(len(data) - 5))])
    handle = lambda offset, size: _varint(offset) + _varint(size)  # noqa: E731
    footer = handle(len(data), len(meta) - 5) + handle(len(data) + len(meta), len(index) - 5)
    footer = footer.ljust(40, b"\x00") + struct.pack("<Q", 0xDB4775248B80FB57)
    return data + meta + index + footer


def _bundle(variables: dict[str, np.ndarray]) -> tuple[bytes, bytes]:
    """(variables.index, variables.data) for float32/int64 variables."""
    dtypes = {np.dtype(np.float32): 1, np.dtype(np.int64): 9}
    entries, data = [(b"", _field(1, 1) + _field(3, _field(1, 1)))], b""
    for name, value in variables.items():
        raw = np.ascontiguousarray(value).astype(value.dtype.newbyteorder("<")).tobytes()
        entry = (_field(1, dtypes[value.dtype]) + _field(2, _shape(value.shape)) + _field(4, len(data))
                 + _field(5, len(raw)) + _varint(6 << 3 | 5) + b"\x00\x00\x00\x00")
        entries.append((name.encode(), entry))
        data += raw
    return _table(entries), data


def _const(name: str, value) -> bytes:
    if isinstance(value, list):  # strings
        tensor = _field(1, 7) + _field(2, _shape([len(value)])) + b"".join(_field(8, v) for v in value)
    else:
        tensor = _field(1, 9) + _field(2, _shape(value.shape)) + _field(4, value.astype("<i8").tobytes())
    attr = _field(5, _field(1, "value") + _field(2, _field(8, tensor)))
    return _field(1, _field(1, name) + _field(2, "Const") + attr)


class _ObjectGraph:
    def __init__(self):
        self.nodes: list[list[tuple[str, int]]] = [[]]
        self.kinds: dict[int, bytes] = {}

    def add(self, parent: int, name: str, kind: bytes = b"") -> int:
        self.nodes.append([])
        node = len(self.nodes) - 1
        self.nodes[parent].append((name, node))
        self.kinds[node] = kind
        return node

    def encode(self) -> bytes:
        out = b""
        for node, children in enumerate(self.nodes):
            body = b"".join(_field(1, _field(1, child) + _field(2, name)) for name, child in children)
            out += _field(1, body + self.kinds.get(node, b""))
        return out


def write_autokeras_model(folder: str, embed_dim: int, categorical: dict[int, list[bytes]], mean: np.ndarray,
                          variance: np.ndarray, dense: list[tuple[np.ndarray, np.ndarray]], dropout_after: int) -> None:
    """An autokeras StructuredDataClassifier as LAION's NSFW files are: Input -> MultiCategoryEncoding
    (`categorical`: column -> vocabulary, index 1.. in order) -> Normalization -> Dense/ReLU... ->
    Dense(1) -> sigmoid, with a Dropout after the `dropout_after`-th ReLU (counting from 1)."""
    layers = [("InputLayer", {"batch_input_shape": {"class_name": "__tuple__", "items": [None, embed_dim]},
                              "dtype": "float64", "sparse": False, "ragged": False, "name": "input_1"}),
              ("Custom>MultiCategoryEncoding", {"name": "multi_category_encoding", "trainable": True, "dtype": "float32",
                                                "encoding": ["int" if c in categorical else "none" for c in range(embed_dim)]}),
              ("Normalization", {"name": "normalization", "trainable": True, "dtype": "float32",
                                 "axis": {"class_name": "__tuple__", "items": [-1]}, "mean": None, "variance": None})]
    for i, (kernel, _) in enumerate(dense):
        suffix = f"_{i}" if i else ""
        last = i == len(dense) - 1
        layers.append(("Dense", {"name": f"dense{suffix}", "units": int(kernel.shape[1]), "activation": "linear",
                                 "use_bias": True}))
        if last:
            layers.append(("Activation", {"name": "classification_head_1", "activation": "sigmoid"}))
        else:
            layers.append(("ReLU", {"name": f"re_lu{suffix}", "max_value": None, "negative_slope": 0.0, "threshold": 0.0}))
            if i + 1 == dropout_after:
                layers.append(("Dropout", {"name": "dropout", "rate": 0.5, "noise_shape": None, "seed": None}))
    config_layers = []
    for index, (kind, config) in enumerate(layers):
        inbound = [[[layers[index - 1][1]["name"], 0, 0, {}]]] if index else []
        config_layers.append({"class_name": kind, "config": config, "name": config["name"], "inbound_nodes": inbound})
    model = {"class_name": "Functional", "config": {"name": "model", "layers": config_layers,
                                                    "input_layers": [["input_1", 0, 0]],
                                                    "output_layers": [["classification_head_1", 0, 0]]}}

    graph, variables, consts, functions = _ObjectGraph(), {}, b"", b""
    with_weights = 0
    for index, (kind, config) in enumerate(layers):
        node = graph.add(0, f"layer-{index}")
        if kind not in ("Custom>MultiCategoryEncoding", "Normalization", "Dense"):
            continue
        prefix = f"layer_with_weights-{with_weights}"
        graph.nodes[0].append((prefix, node))
        with_weights += 1
        if kind == "Normalization":
            variables[f"{prefix}/mean/.ATTRIBUTES/VARIABLE_VALUE"] = mean.astype(np.float32)
            variables[f"{prefix}/variance/.ATTRIBUTES/VARIABLE_VALUE"] = variance.astype(np.float32)
            variables[f"{prefix}/count/.ATTRIBUTES/VARIABLE_VALUE"] = np.asarray(1000, np.int64)
        elif kind == "Dense":
            kernel, bias = dense[sum(1 for k, _ in layers[:index] if k == "Dense")]
            variables[f"{prefix}/kernel/.ATTRIBUTES/VARIABLE_VALUE"] = kernel.astype(np.float32)
            variables[f"{prefix}/bias/.ATTRIBUTES/VARIABLE_VALUE"] = bias.astype(np.float32)
        else:
            encodings = graph.add(node, "encoding_layers")
            for n, (column, tokens) in enumerate(sorted(categorical.items())):
                lookup = graph.add(encodings, str(column))
                table = graph.add(lookup, "lookup_table")
                function_name = f"__inference__initializer_{column}"
                graph.add(table, "_initialize", _field(6, _field(1, function_name)))
                key_node = graph.add(table, "_key_constant", _field(9, _field(1, f"Const_{2 * n}")))
                value_node = graph.add(table, "_value_constant", _field(9, _field(1, f"Const_{2 * n + 1}")))
                consts += _const(f"Const_{2 * n}", list(tokens))
                consts += _const(f"Const_{2 * n + 1}", np.arange(1, len(tokens) + 1, dtype=np.int64))
                bound = b"".join(_varint(v) for v in (table, key_node, value_node))
                functions += _field(2, _field(1, function_name) + _field(2, _field(2, bound)))
    index_bytes, data = _bundle(variables)
    os.makedirs(os.path.join(folder, "variables"), exist_ok=True)
    os.makedirs(os.path.join(folder, "assets"), exist_ok=True)
    with open(os.path.join(folder, "variables", "variables.index"), "wb") as f:
        f.write(index_bytes)
    with open(os.path.join(folder, "variables", "variables.data-00000-of-00001"), "wb") as f:
        f.write(data)
    metadata = _field(1, _field(3, "root") + _field(4, "_tf_keras_network") + _field(5, json.dumps(model)))
    with open(os.path.join(folder, "keras_metadata.pb"), "wb") as f:
        f.write(metadata)
    meta_graph = _field(2, consts) + _field(7, graph.encode() + functions)
    with open(os.path.join(folder, "saved_model.pb"), "wb") as f:
        f.write(_field(1, 1) + _field(2, meta_graph))


def zip_folder(folder: str, path: str) -> None:
    """The folder zipped with its own name at the top, as LAION's .zip files are."""
    top = os.path.basename(folder.rstrip("/"))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{top}/", "")
        for root, _, names in os.walk(folder):
            for name in sorted(names):
                full = os.path.join(root, name)
                archive.write(full, os.path.join(top, os.path.relpath(full, folder)))
