"""Reading and writing ONNX files: clear errors for what is not a usable ONNX model, atomic
writes that never leave a partial file or overwrite one without being told to, and external
data for models over 2 GiB."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO

import onnx
import onnx.external_data_helper

from unfold.errors import UnfoldError
from unfold.fold.weights import proto_nbytes, weightless_model

PROTOBUF_LIMIT = 2**31 - 1


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Load and check an ONNX model (external data from beside it)."""
    path = Path(path)
    if not path.exists():
        raise UnfoldError(f"{path}: no such file")
    if path.is_dir():
        raise UnfoldError(f"{path} is a directory; give an .onnx file")
    try:
        model = read_streaming(path)
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise UnfoldError(f"{path} is not an ONNX model (or is truncated): "
                          f"{type(exc).__name__}: {exc}") from None
    if not model.graph.node and not model.graph.output:
        raise UnfoldError(f"{path} holds no ONNX graph (is it an ONNX file?)")
    try:  # on a weightless copy: checking the model itself serializes every weight once more
        onnx.checker.check_model(weightless_model(model), full_check=True)
    except Exception as exc:
        raise UnfoldError(f"{path} fails onnx.checker: {exc}") from None
    return model


def check_output_path(out: str | Path, *, force: bool, inputs: tuple[Path, ...] = ()) -> Path:
    """Refuse an output that is an input, sits in a missing or unwritable folder, or exists
    (unless `force`). Called before any work, so a bad --out costs nothing."""
    out = Path(out)
    for given in inputs:
        if out.resolve() == Path(given).resolve():
            raise UnfoldError(f"--out {out} is the input file; write the result elsewhere")
    if out.is_dir():
        raise UnfoldError(f"--out {out} is a directory; give a file name")
    if out.exists() and not force:
        raise UnfoldError(f"{out} exists; pass --force to overwrite it")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise UnfoldError(f"cannot write {out}: the folder {folder} does not exist")
    try:  # os.access says yes to root on a read-only file system: try for real
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".probe", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UnfoldError(f"cannot write {out}: the folder {folder} is not writable "
                          f"({exc.strerror})") from None
    return out


def save_onnx_atomic(model: onnx.ModelProto, out: str | Path) -> Path:
    """Write to a temporary file beside `out`, then rename: readers never see a partial file
    and an interrupted run leaves nothing. Over 2 GiB the weights go to `out.name + '.data'`."""
    out = Path(out)
    external = serialized_size_at_least(model) >= PROTOBUF_LIMIT
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent or ".")
    os.close(fd)
    tmp_path = Path(tmp)
    data_name = f"{out.name}.data"
    try:
        _write(model, out, tmp_path, data_name, external)
    except OSError as exc:
        raise UnfoldError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
        leftover = out.parent / (data_name + ".tmp")
        if leftover.exists():
            leftover.unlink()
    return out


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _without(message, skip: str):
    """A copy of `message` without its field `skip` (which is not copied at all)."""
    shell = type(message)()
    for field, value in message.ListFields():
        if field.name == skip:
            continue
        if hasattr(value, "extend"):  # a repeated field
            getattr(shell, field.name).extend(value)
        elif field.message_type is not None:
            getattr(shell, field.name).CopyFrom(value)
        else:
            setattr(shell, field.name, value)
    return shell


def serialized_size_at_least(model: onnx.ModelProto) -> int:
    """A lower bound of model.ByteSize() that never serializes the weights (upb computes
    ByteSize by encoding: a second copy of the whole model)."""
    return sum(proto_nbytes(t) for t in model.graph.initializer
               if t.data_location != onnx.TensorProto.EXTERNAL)


class _Reader:
    """Protobuf wire format, read from a file field by field (varints, length-delimited)."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file

    def varint(self, *, at_end_ok: bool = False) -> int | None:
        result = shift = 0
        while True:
            byte = self.file.read(1)
            if not byte:
                if at_end_ok and shift == 0:
                    return None
                raise ValueError("truncated: the file ends inside a field")
            result |= (byte[0] & 0x7F) << shift
            if not byte[0] & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise ValueError("malformed varint")

    def exactly(self, count: int) -> bytes:
        data = self.file.read(count)
        if len(data) != count:
            raise ValueError("truncated: the file ends inside a field")
        return data

    def payload(self, wire_type: int) -> bytes:
        """The field's value, encoded as it was (length prefix included)."""
        if wire_type == 0:
            return _varint(self.varint() or 0)
        if wire_type == 1:
            return self.exactly(8)
        if wire_type == 5:
            return self.exactly(4)
        if wire_type == 2:
            length = self.varint() or 0
            return _varint(length) + self.exactly(length)
        raise ValueError(f"unsupported protobuf wire type {wire_type}")


def read_streaming(path: str | Path) -> onnx.ModelProto:
    """onnx.load without its second copy of the weights: onnx.load reads the whole file into
    one bytes object and parses that (2x the weights at once); this parses the graph's
    initializers one at a time and everything else as usual."""
    model = onnx.ModelProto()
    graph_field = model.DESCRIPTOR.fields_by_name["graph"].number
    initializer_field = model.graph.DESCRIPTOR.fields_by_name["initializer"].number
    head = bytearray()
    with open(path, "rb") as file:
        reader = _Reader(file)
        while (key := reader.varint(at_end_ok=True)) is not None:
            if key >> 3 != graph_field or key & 7 != 2:
                head += _varint(key) + reader.payload(key & 7)
                continue
            length = reader.varint() or 0
            end = file.tell() + length
            rest = bytearray()
            while file.tell() < end:
                inner = reader.varint() or 0
                if inner >> 3 == initializer_field and inner & 7 == 2:
                    model.graph.initializer.add().ParseFromString(
                        reader.exactly(reader.varint() or 0))
                else:
                    rest += _varint(inner) + reader.payload(inner & 7)
            if file.tell() != end:
                raise ValueError("malformed: a field runs past the end of the graph")
            model.graph.MergeFromString(bytes(rest))
    model.MergeFromString(bytes(head))
    return model


def write_streaming(model: onnx.ModelProto, file: BinaryIO) -> None:
    """Serialize `model` as onnx.save_model does (the same message, fields in another order),
    one initializer at a time: SerializeToString would hold a second copy of every weight."""
    graph_field = model.DESCRIPTOR.fields_by_name["graph"].number
    initializer_field = model.graph.DESCRIPTOR.fields_by_name["initializer"].number
    head = _without(model, "graph").SerializeToString()
    rest = _without(model.graph, "initializer").SerializeToString()
    tag = _varint(initializer_field << 3 | 2)
    parts = [_tensor_parts(t) for t in model.graph.initializer]
    sizes = [len(shell) + (len(_raw_key(raw)) + raw if raw else 0) for shell, raw in parts]
    graph_size = len(rest) + sum(len(tag) + len(_varint(n)) + n for n in sizes)
    file.write(head)
    if model.HasField("graph"):
        file.write(_varint(graph_field << 3 | 2) + _varint(graph_size) + rest)
        for tensor, (shell, raw), size in zip(model.graph.initializer, parts, sizes,
                                              strict=True):
            data = tensor.raw_data if raw else b""  # one tensor's bytes at a time
            if len(data) != raw:
                raise ValueError(f"initializer {tensor.name!r} holds {len(data)} bytes of raw "
                                 f"data; its dims and type say {raw}")
            file.write(tag + _varint(size) + shell)
            if raw:
                file.write(_raw_key(raw))
                file.write(data)
            del data


RAW_DATA_FIELD = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number


# several values per byte: the raw length does not follow from the numpy item size
PACKED_TYPES = frozenset(getattr(onnx.TensorProto, name) for name in
                         ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")
                         if hasattr(onnx.TensorProto, name))


def _raw_key(length: int) -> bytes:
    return _varint(RAW_DATA_FIELD << 3 | 2) + _varint(length)


def _tensor_parts(tensor: onnx.TensorProto) -> tuple[bytes, int]:
    """(the tensor serialized without its raw_data, the raw_data's length: 0 when it has none)
    without copying the raw data (its length follows from dims and type)."""
    if not tensor.HasField("raw_data") or tensor.data_type in PACKED_TYPES:
        return tensor.SerializeToString(), 0
    return _without(tensor, "raw_data").SerializeToString(), proto_nbytes(tensor)


def _write(model: onnx.ModelProto, out: Path, tmp_path: Path, data_name: str,
           external: bool) -> None:
    if not external:
        with open(tmp_path, "wb") as file:
            write_streaming(model, file)
        os.replace(tmp_path, out)
        return
    onnx.save_model(model, str(tmp_path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=data_name + ".tmp")
    # the .onnx refers to its data by file name: point it at the final name, then rename
    # the data and the model last, so that a reader never pairs a new model with old data
    written = onnx.load(str(tmp_path), load_external_data=False)
    for tensor in written.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = data_name
    onnx.save_model(written, str(tmp_path))
    os.replace(out.parent / (data_name + ".tmp"), out.parent / data_name)
    os.replace(tmp_path, out)
