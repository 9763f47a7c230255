"""An .onnx file's external-data references, read and checked before ONNX Runtime opens the file.

A TensorProto may keep its bytes in another file (``data_location`` EXTERNAL, ``external_data`` location / offset /
length). ONNX Runtime releases before the end of 2025 read whatever path a file names there (``/etc/shadow``,
``../../x``, a symbolic link, ``/dev/zero`` for 40 GB), and robots often run such releases (the Jetson wheels).
sigma-export never writes external data, but a file in the same folder is a standard ONNX layout, so it is checked
here rather than refused: inside the model's folder (symbolic links resolved), a regular file, and offset, length
and the tensor's declared size within it. Nothing is allocated for the tensors themselves.

The protobuf wire format is walked directly (no onnx or protobuf package: a deployment has only onnxruntime),
along the fields of onnx.proto that can hold tensors: ModelProto.graph (7) and .functions (25); GraphProto.node
(1), .initializer (5), .sparse_initializer (15); FunctionProto.node (7); NodeProto.attribute (5); AttributeProto.t
(5), .g (6), .tensors (10), .graphs (11), .sparse_tensor (22), .sparse_tensors (23); SparseTensorProto.values (1),
.indices (2); TensorProto.dims (1), .data_type (2), .name (8), .external_data (13), .data_location (14).
"""
from __future__ import annotations

import math
import mmap
import os
from pathlib import Path
from typing import Iterator

EXTERNAL = 1  # TensorProto.DataLocation
# bytes per element by TensorProto.DataType (4-bit types: 1, an upper bound; unknown types: 1, a lower bound)
ITEM_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16, 16: 2}
MAX_DEPTH = 64  # nested graphs (If/Loop/Scan bodies); sigma-export's files nest 2


class ExternalDataError(ValueError):
    """An external-data reference that points outside the model's folder or beyond its file; the message says which."""


class _Malformed(ValueError):
    pass


def check_external_data(path: Path) -> int:
    """ExternalDataError naming the tensor and the reference when one of ``path``'s tensors keeps its data outside
    the model's folder, in something other than a regular file, or beyond the end of its file (offset, length, or
    the size its dimensions and type declare); returns how many tensors keep external data (0 for sigma-export's).

    A file that is not protobuf at all is left to ONNX Runtime to name (returns 0).
    """
    folder = Path(os.path.realpath(path.parent))
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return 0
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # unmapped when the last view goes
    try:
        tensors = [t for t in _model_tensors(memoryview(data)) if t["location"] is not None]
    except (_Malformed, RecursionError):
        return 0  # not a model ONNX Runtime can parse either; it names the file
    for tensor in tensors:
        _check_tensor(tensor, folder)
    return len(tensors)


def _check_tensor(tensor: dict, folder: Path) -> None:
    name, location = tensor.get("name") or "<unnamed>", tensor["location"]
    where = f"tensor {name!r} keeps its data in {location!r}"
    relative = Path(location)
    target = Path(os.path.realpath(folder / relative))
    if relative.is_absolute() or ".." in relative.parts or folder not in (target, *target.parents):
        raise ExternalDataError(f"{where}, outside the model's folder {folder}: a model file reads data beside it only")
    if not target.is_file():
        raise ExternalDataError(f"{where}, which is {'not a regular file' if target.exists() else 'missing'} "
                                f"(in {folder})")
    size = target.stat().st_size
    try:
        offset, length = int(tensor.get("offset", 0)), tensor.get("length")
        length = int(length) if length is not None else size - offset
    except ValueError:
        raise ExternalDataError(f"{where} at offset {tensor.get('offset')!r}, length {tensor.get('length')!r}: "
                                "not integers") from None
    declared = math.prod(tensor["dims"]) * ITEM_BYTES.get(tensor["type"], 1)
    if offset < 0 or length < 0 or offset + length > size or declared > length or min(tensor["dims"], default=0) < 0:
        raise ExternalDataError(
            f"{where} at offset {offset}, {length} bytes, for {'x'.join(map(str, tensor['dims'])) or 'a scalar'} "
            f"elements ({declared} bytes), but that file holds {size} bytes: damaged or forged")


def _fields(view: memoryview) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value): an int for varint and fixed types, a memoryview for length-delimited."""
    pos, end = 0, len(view)
    while pos < end:
        key, pos = _varint(view, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(view, pos)
        elif wire == 1:
            value, pos = int.from_bytes(view[pos:pos + 8], "little"), pos + 8
        elif wire == 2:
            size, pos = _varint(view, pos)
            if pos + size > end:
                raise _Malformed("a field runs past the end")
            value, pos = view[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = int.from_bytes(view[pos:pos + 4], "little"), pos + 4
        else:
            raise _Malformed(f"wire type {wire}")
        if pos > end:
            raise _Malformed("truncated")
        yield field, wire, value


def _varint(view: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(view) or shift > 63:
            raise _Malformed("bad varint")
        byte = view[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _model_tensors(model: memoryview) -> Iterator[dict]:
    for field, wire, value in _fields(model):
        if wire == 2 and field == 7:
            yield from _graph_tensors(value, 1)
        elif wire == 2 and field == 25:  # FunctionProto: its nodes
            for f, w, v in _fields(value):
                if w == 2 and f == 7:
                    yield from _node_tensors(v, 1)


def _graph_tensors(graph: memoryview, depth: int) -> Iterator[dict]:
    if depth > MAX_DEPTH:
        raise _Malformed("graphs nested too deep")
    for field, wire, value in _fields(graph):
        if wire != 2:
            continue
        if field == 1:
            yield from _node_tensors(value, depth)
        elif field == 5:
            yield _tensor(value)
        elif field == 15:
            yield from _sparse_tensors(value)


def _node_tensors(node: memoryview, depth: int) -> Iterator[dict]:
    for field, wire, attribute in _fields(node):
        if wire != 2 or field != 5:
            continue
        for f, w, v in _fields(attribute):
            if w != 2:
                continue
            if f in (5, 10):
                yield _tensor(v)
            elif f in (6, 11):
                yield from _graph_tensors(v, depth + 1)
            elif f in (22, 23):
                yield from _sparse_tensors(v)


def _sparse_tensors(sparse: memoryview) -> Iterator[dict]:
    for field, wire, value in _fields(sparse):
        if wire == 2 and field in (1, 2):
            yield _tensor(value)


def _tensor(tensor: memoryview) -> dict:
    """The fields of a TensorProto that say where its data is; "location" None when it is stored inline."""
    dims, entries, info = [], {}, {"type": 0, "external": False}
    for field, wire, value in _fields(tensor):
        if field == 1 and wire == 0:
            dims.append(value - (1 << 64) if value >= 1 << 63 else value)
        elif field == 1 and wire == 2:  # packed dims
            pos = 0
            while pos < len(value):
                dim, pos = _varint(value, pos)
                dims.append(dim - (1 << 64) if dim >= 1 << 63 else dim)
        elif field == 2 and wire == 0:
            info["type"] = value
        elif field == 8 and wire == 2:
            info["name"] = bytes(value).decode("utf-8", "replace")
        elif field == 13 and wire == 2:
            pair = {f: bytes(v).decode("utf-8", "replace") for f, w, v in _fields(value) if w == 2}
            entries[pair.get(1, "")] = pair.get(2, "")
        elif field == 14 and wire == 0:
            info["external"] = value == EXTERNAL
    external = info["external"] or bool(entries)
    return {"name": info.get("name"), "dims": dims, "type": info["type"],
            "location": entries.get("location", "") if external else None,
            "offset": entries.get("offset", 0), "length": entries.get("length")}
