"""Reading and writing ONNX files: clear errors for what is not a usable ONNX model, atomic
writes that never leave a partial file or overwrite one without being told to, and external
data for models over 2 GiB."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
import onnx.defs
import onnx.external_data_helper
import onnx.numpy_helper

from unfold.errors import UnfoldError, option
from unfold.interrupts import raise_deferred
from unfold.model_parts import (
    ModelParts,
    array_bytes,
    declared_size_problem,
    duplicate_weight,
    graph_problem,
    proto_nbytes,
    weight_header,
    weight_nbytes,
    weight_proto,
    weightless_model,
    without_field,
)

PROTOBUF_LIMIT = 2**31 - 1


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Load and check an ONNX model (external data from beside it)."""
    path = _existing_file(path)
    try:
        model = read_streaming(path)
        if _check_data_files(path, model.graph.initializer):
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    except UnfoldError:
        raise
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise _unreadable(path, exc) from None
    _check(path, ModelParts.viewing(model))
    return model


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise UnfoldError(f"{path}: no such file")
    if path.is_dir():
        raise UnfoldError(f"{path} is a directory; give an .onnx file")
    if not path.is_file():
        raise UnfoldError(f"{path} is not a regular file ({file_kind(path)}); give an .onnx "
                          f"file")
    return path


def file_kind(path: Path) -> str:
    """What a path that is no regular file is, in words."""
    mode = path.stat().st_mode
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory")):
        if test(mode):
            return kind
    return "not a regular file"


def _check_data_files(path: Path, tensors: Iterable[onnx.TensorProto]) -> set[Path]:
    """The external data files the model's tensors name, each checked to be there and a regular
    file (inside the model's folder: onnx refuses any other). Returns them."""
    found: set[Path] = set()
    for tensor in tensors:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        data = path.parent / location
        if data in found:
            continue
        if not data.exists():
            raise UnfoldError(f"{path}: its weights are stored in the data file '{location}', "
                              f"which is missing (looked for {data})")
        if not data.is_file():
            raise UnfoldError(f"{path}: its data file '{location}' is not a regular file "
                              f"({file_kind(data)})")
        found.add(data)
    return found


def _unreadable(path: Path, exc: Exception) -> UnfoldError:
    return UnfoldError(f"{path} is not an ONNX model (or is truncated): "
                       f"{type(exc).__name__}: {exc}")


def _newest_opsets() -> dict[str, int]:
    """The newest opset of each ONNX domain the installed onnx has operator schemas for."""
    newest: dict[str, int] = {}
    for schema in onnx.defs.get_all_schemas_with_history():
        newest[schema.domain] = max(newest.get(schema.domain, 0), schema.since_version)
    newest[""] = max(newest.get("", 0), onnx.defs.onnx_opset_version())
    return newest


def _check_opsets(path: Path, model: onnx.ModelProto) -> None:
    """An opset newer than the installed onnx knows would be folded by rules it does not know
    and written, and then refused by the runtime: refused here instead."""
    newest = _newest_opsets()
    for opset in model.opset_import:
        domain = "" if opset.domain == "ai.onnx" else opset.domain
        if domain in newest and opset.version > newest[domain]:
            name = f"domain {domain!r}" if domain else "the default ONNX domain"
            raise UnfoldError(f"{path} declares opset {opset.version} of {name}; the installed "
                              f"onnx {onnx.__version__} supports opsets up to {newest[domain]}")


def _check(path: Path, parts: ModelParts, *, folding: bool = False) -> None:
    graph = parts.skeleton.graph
    if not graph.node and not graph.output:
        raise UnfoldError(f"{path} holds no ONNX graph (is it an ONNX file?)")
    _check_opsets(path, parts.skeleton)
    _check_weight_sizes(path, parts)
    problem = graph_problem(parts, folding=folding) or declared_size_problem(parts)
    if problem is not None:
        raise UnfoldError(f"{path}: {problem}")
    try:  # on a weightless copy: checking the model itself serializes every weight once more
        onnx.checker.check_model(weightless_model(parts), full_check=True)
    except Exception as exc:
        raise UnfoldError(f"{path} fails onnx.checker: {exc}") from None


def _check_weight_sizes(path: Path, parts: ModelParts) -> None:
    """Each initializer holds as many values as its dims say (a tensor whose dims claim 2 GiB
    over 64 bytes of data would be read, and written back, inconsistent)."""
    for name, weight in parts.weights.items():
        if not isinstance(weight, onnx.TensorProto) or weight.data_type in PACKED_TYPES or \
                weight.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
            continue
        expected = proto_nbytes(weight)
        if weight.HasField("raw_data"):
            held = len(weight.raw_data)
        elif weight.data_location == onnx.TensorProto.EXTERNAL:
            continue  # (its length is checked when it is read)
        else:
            try:
                itemsize = onnx.helper.tensor_dtype_to_np_dtype(weight.data_type).itemsize
                field = onnx.helper.tensor_dtype_to_field(weight.data_type)
            except (KeyError, TypeError, ValueError):
                continue  # a type onnx cannot describe: the checker speaks for it
            values = len(getattr(weight, field))
            if weight.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128):
                values //= 2
            if values == 0 and expected:
                held = 0
            else:
                held = values * itemsize
        if held != expected:
            raise UnfoldError(f"{path}: the initializer {name!r} holds {held} bytes of data, "
                              f"but its dims {list(weight.dims)} and type say {expected}: the "
                              f"file is inconsistent")


def load_onnx_parts(path: str | Path) -> ModelParts:
    """Load and check an ONNX model, its weights apart (for `unfold.fold.fold_parts`)."""
    path = _existing_file(path)
    try:
        parts = read_parts(path)
        data_files = _check_data_files(
            path, [w for w in parts.weights.values() if isinstance(w, onnx.TensorProto)])
        parts.sources = frozenset({path.resolve(), *(d.resolve() for d in data_files)})
        for tensor in parts.weights.values():
            if isinstance(tensor, onnx.TensorProto) and \
                    tensor.data_location == onnx.TensorProto.EXTERNAL:
                # reads raw_data in, and marks the tensor as holding its values
                onnx.external_data_helper.load_external_data_for_tensor(tensor,
                                                                        str(path.parent))
    except UnfoldError:
        raise
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise _unreadable(path, exc) from None
    _check(path, parts)
    return parts


def check_output_path(out: str | Path, *, force: bool, inputs: tuple[Path, ...] = (),
                      parameter: str = "out") -> Path:
    """Refuse an output that is an input, sits in a missing or unwritable folder, or exists
    (unless `force`). Called before any work, so a bad output path costs nothing. `parameter`:
    the caller's name for it, in the messages."""
    out = Path(out)
    for given in inputs:
        if out.resolve() == Path(given).resolve():
            raise UnfoldError(f"{option(parameter, str(out))} is the input file; write the "
                              f"result elsewhere")
    if out.is_dir():
        raise UnfoldError(f"{option(parameter, str(out))} is a directory; give a file name")
    if out.exists() and not out.is_file():
        raise UnfoldError(f"{option(parameter, str(out))} is not a regular file "
                          f"({file_kind(out)}): unfold replaces only regular files")
    if out.exists() and not force:
        raise UnfoldError(f"{out} exists; pass {option('force', True)} to overwrite it")
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


class StagedOnnx:
    """A model written in full to a private folder beside its destination (`path`, under its
    final name, its data file beside it), not yet where readers look: it can be run and
    checked there, then `publish`ed (renamed into place) or left to go with the folder."""

    def __init__(self, path: Path, out: Path, data_name: str | None) -> None:
        self.path, self.out, self.data_name = path, out, data_name

    def publish(self, *, force: bool) -> Path:
        """Put into place: the data file first, the model last, so a reader never pairs a new
        model with old data. Without `force` nothing that exists is replaced, not even a file
        another run created since the checks (link(2) fails if the name exists)."""
        if self.data_name is not None:
            data = self.out.parent / self.data_name
            if not force and data.exists():
                raise UnfoldError(f"{data} exists; pass {option('force', True)} to overwrite "
                                  f"it")
            publish_file(self.path.parent / self.data_name, data, force=force)
        publish_file(self.path, self.out, force=force)
        return self.out


def publish_file(staged: Path, final: Path, *, force: bool) -> None:
    """Move the finished file `staged` to `final`, with the mode `open()` would give a new file
    (or the replaced file's). With `force` a regular file there is replaced; a device, FIFO or
    socket never is. Without it, an existing `final` is an error, however late it appeared."""
    raise_deferred()  # an interrupt kept since it arrived (unfold.interrupts): nothing written
    try:
        if final.exists() and not final.is_file():
            raise UnfoldError(f"{final} is not a regular file ({file_kind(final)}): unfold "
                              f"replaces only regular files")
        os.chmod(staged, _mode_for(final))
        if force:
            os.replace(staged, final)
            return
        try:
            os.link(staged, final)
        except FileExistsError:
            raise UnfoldError(f"{final} exists (written since this run began?); pass "
                              f"{option('force', True)} to overwrite it") from None
        except OSError:  # a file system without hard links: the check, then the rename
            if final.exists():
                raise UnfoldError(f"{final} exists; pass {option('force', True)} to "
                                  f"overwrite it") from None
            os.replace(staged, final)
            return
        os.unlink(staged)
    except OSError as exc:
        raise UnfoldError(f"cannot write {final}: {exc.strerror or exc}") from None


@contextmanager
def staged_onnx(model: onnx.ModelProto | ModelParts, out: str | Path) -> Iterator[StagedOnnx]:
    """Write `model` into a new private folder beside `out` (mkdtemp: created new, 0700, so no
    link planted under a guessable name can redirect a write), under `out`'s own name; over 2
    GiB its weights go to `out.name + '.data'` beside it. The folder and whatever is still in
    it go when the block ends: an error, a failed check or an interrupt leaves nothing."""
    out = Path(out)
    external = serialized_size_at_least(model) >= PROTOBUF_LIMIT
    data_name = f"{out.name}.data" if external else None
    try:
        folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp",
                                       dir=out.parent or "."))
    except OSError as exc:
        raise UnfoldError(f"cannot write {out}: {exc.strerror or exc}") from None
    try:
        path = folder / out.name
        try:
            with _create(path) as file:
                if data_name is None:
                    write_streaming(model, file)
                else:
                    with _create(folder / data_name) as data:
                        write_streaming(model, file, external=(data, data_name))
        except OSError as exc:
            raise UnfoldError(f"cannot write {out}: {exc.strerror or exc}") from None
        yield StagedOnnx(path, out, data_name)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _create(path: Path) -> BinaryIO:
    """A new file, never one that exists nor through a link (O_EXCL | O_NOFOLLOW)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    return os.fdopen(os.open(path, flags, 0o600), "wb")


def check_not_read(out: Path, sources: Iterable[Path], parameter: str = "out") -> None:
    """Refuse an output (or its data file) that is a file the input reads: the model or its
    external data, whatever `force` says."""
    resolved = {Path(p).resolve() for p in sources}
    for target in (out, out.parent / f"{out.name}.data"):
        if target.resolve() in resolved:
            raise UnfoldError(f"{option(parameter, str(out))}: {target} is a file the input "
                              f"reads; write the result elsewhere")


def save_onnx_atomic(model: onnx.ModelProto | ModelParts, out: str | Path, *,
                     force: bool = False) -> Path:
    """Write to a private folder beside `out`, then move into place: readers never see a
    partial file and an interrupted run leaves nothing; an existing file is replaced only with
    `force`. Over 2 GiB the weights go to `out.name + '.data'`."""
    with staged_onnx(model, out) as staged:
        return staged.publish(force=force)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def serialized_size_at_least(model: onnx.ModelProto | ModelParts) -> int:
    """A lower bound of model.ByteSize() that never serializes the weights (upb computes
    ByteSize by encoding: a second copy of the whole model)."""
    weights = model.weights.values() if isinstance(model, ModelParts) else \
        model.graph.initializer
    return sum(weight_nbytes(w) for w in weights if not isinstance(w, onnx.TensorProto)
               or w.data_location != onnx.TensorProto.EXTERNAL)


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


def read_parts(path: str | Path) -> ModelParts:
    """The model in `path`, its initializers parsed one at a time, each into a TensorProto of
    its own (onnx.load reads the whole file into one bytes object and parses that: twice the
    weights at once; and inside one ModelProto a weight is never freed before the model)."""
    weights: dict[str, onnx.TensorProto | np.ndarray] = {}

    def keep_apart(data: bytes) -> None:
        tensor = onnx.TensorProto()
        tensor.ParseFromString(data)
        if tensor.name in weights:
            raise duplicate_weight(tensor.name)
        weights[tensor.name] = tensor

    return ModelParts(_read(path, keep_apart), weights)


def read_streaming(path: str | Path) -> onnx.ModelProto:
    """onnx.load without its second copy of the weights: the initializers are parsed into the
    model one at a time."""
    model = onnx.ModelProto()
    skeleton = _read(path, lambda data: model.graph.initializer.add().ParseFromString(data))
    model.MergeFrom(skeleton)  # the initializers stay first: the order onnx.load gives
    return model


def _read(path: str | Path, take_initializer: Callable[[bytes], object]) -> onnx.ModelProto:
    """The model in `path` without its initializers, each of which goes to
    `take_initializer` as its serialized bytes, one at a time."""
    skeleton = onnx.ModelProto()
    graph_field = skeleton.DESCRIPTOR.fields_by_name["graph"].number
    initializer_field = skeleton.graph.DESCRIPTOR.fields_by_name["initializer"].number
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
                    take_initializer(reader.exactly(reader.varint() or 0))
                else:
                    rest += _varint(inner) + reader.payload(inner & 7)
            if file.tell() != end:
                raise ValueError("malformed: a field runs past the end of the graph")
            skeleton.graph.MergeFromString(bytes(rest))
    skeleton.MergeFromString(bytes(head))
    return skeleton


def write_streaming(model: onnx.ModelProto | ModelParts, file: BinaryIO,
                    external: tuple[BinaryIO, str] | None = None) -> None:
    """Serialize `model` as onnx.save_model does (the same message, fields in another order),
    one initializer at a time: SerializeToString would hold a second copy of every weight.
    With `external` (the data file, its name beside the model) the weights of at least
    EXTERNAL_MIN_BYTES go there instead, as onnx's external data."""
    parts = model if isinstance(model, ModelParts) else ModelParts.viewing(model)
    skeleton = parts.skeleton
    graph_field = skeleton.DESCRIPTOR.fields_by_name["graph"].number
    initializer_field = skeleton.graph.DESCRIPTOR.fields_by_name["initializer"].number
    head = without_field(skeleton, "graph").SerializeToString()
    rest = without_field(skeleton.graph, "initializer").SerializeToString()
    tag = _varint(initializer_field << 3 | 2)
    layout = _external_layout(parts, external[1]) if external else {}
    sizes = {name: _tensor_size(name, w, layout.get(name)) for name, w in parts.weights.items()}
    graph_size = len(rest) + sum(len(tag) + len(_varint(n)) + n for n in sizes.values())
    file.write(head)
    if not skeleton.HasField("graph") and not parts.weights:
        return
    file.write(_varint(graph_field << 3 | 2) + _varint(graph_size) + rest)
    for name, weight in parts.weights.items():
        file.write(tag + _varint(sizes[name]))
        if name in layout:
            file.write(_external_stub(name, weight, layout[name]).SerializeToString())
            data_file = external[0]  # type: ignore[index]  # layout is empty without it
            data_file.seek(int(layout[name][1].value))
            data_file.write(_raw_bytes(weight))
            continue
        shell, raw = _shell(name, weight)
        file.write(shell.SerializeToString())
        if raw:
            data = _raw_bytes(weight)  # one tensor's bytes at a time
            if len(data) != raw:
                raise ValueError(f"initializer {name!r} holds {len(data)} bytes of raw data; "
                                 f"its dims and type say {raw}")
            file.write(_raw_key(raw))
            file.write(data)
            del data


# below this, a weight stays inside the .onnx file (onnx.save_model's default threshold)
EXTERNAL_MIN_BYTES = 1024
# offsets in the data file are multiples of this (onnx aligns for memory mapping alike)
EXTERNAL_ALIGN = 4096


def _external_layout(parts: ModelParts, data_name: str) -> dict[str, list]:
    """name -> external_data entries (location, offset, length) of the weights that go to
    the data file, laid out one after the other."""
    layout, offset = {}, 0
    for name, weight in parts.weights.items():
        size = weight_nbytes(weight)
        if size < EXTERNAL_MIN_BYTES or _is_packed(weight):
            continue
        offset = -(-offset // EXTERNAL_ALIGN) * EXTERNAL_ALIGN
        layout[name] = [onnx.StringStringEntryProto(key=k, value=str(v)) for k, v in
                        (("location", data_name), ("offset", offset), ("length", size))]
        offset += size
    return layout


def _is_packed(weight: onnx.TensorProto | np.ndarray) -> bool:
    return isinstance(weight, onnx.TensorProto) and weight.data_type in PACKED_TYPES


def _raw_bytes(weight: onnx.TensorProto | np.ndarray) -> bytes:
    """The values as raw_data holds them (little-endian, row-major)."""
    if isinstance(weight, np.ndarray):
        return array_bytes(weight)
    if weight.HasField("raw_data"):
        return weight.raw_data
    return onnx.numpy_helper.to_array(weight).tobytes()  # values in typed fields


def _external_stub(name: str, weight: onnx.TensorProto | np.ndarray,
                   entries: list) -> onnx.TensorProto:
    """The initializer as the .onnx file holds it when its values are in the data file."""
    data_type, dims = weight_header(weight)
    stub = onnx.TensorProto(name=name, data_type=data_type, dims=dims,
                            data_location=onnx.TensorProto.EXTERNAL)
    stub.external_data.extend(entries)
    return stub


def _shell(name: str, weight: onnx.TensorProto | np.ndarray) -> tuple[onnx.TensorProto, int]:
    """(the initializer without its raw_data, the raw_data's length: 0 when it has none),
    never copying the values."""
    if isinstance(weight, np.ndarray):
        if weight.dtype.kind not in "biufc":  # strings, objects: no raw data
            return weight_proto(name, weight), 0
        data_type, dims = weight_header(weight)
        return onnx.TensorProto(name=name, data_type=data_type, dims=dims), weight.nbytes
    if not weight.HasField("raw_data") or weight.data_type in PACKED_TYPES:
        return weight_proto(name, weight), 0
    shell = without_field(weight, "raw_data")
    shell.name = name
    return shell, proto_nbytes(weight)


def _tensor_size(name: str, weight: onnx.TensorProto | np.ndarray, external: list | None) -> int:
    """The serialized size of the initializer, without serializing its values."""
    if external is not None:
        return _external_stub(name, weight, external).ByteSize()
    shell, raw = _shell(name, weight)
    return shell.ByteSize() + (len(_raw_key(raw)) + raw if raw else 0)


RAW_DATA_FIELD = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number


# several values per byte: the raw length does not follow from the numpy item size
PACKED_TYPES = frozenset(getattr(onnx.TensorProto, name) for name in
                         ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")
                         if hasattr(onnx.TensorProto, name))


def write_bytes_atomic(data: bytes, out: str | Path, *, force: bool = True) -> Path:
    """Any file unfold writes (a benchmark's JSON, a plot, an engine): to a temporary file
    beside `out` (created new: mkstemp), then moved into place with the mode `open()` would
    give it (or the replaced file's); an error or an interrupt leaves nothing behind. Callers
    check `--force` first (check_output_path); `force=False` also refuses a file that appeared
    since."""
    out = Path(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent or ".")
    tmp_path = Path(tmp)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        publish_file(tmp_path, out, force=force)
    except OSError as exc:
        raise UnfoldError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return out


def _raw_key(length: int) -> bytes:
    return _varint(RAW_DATA_FIELD << 3 | 2) + _varint(length)


def _mode_for(path: Path) -> int:
    """The permission bits a written file gets: those of the file it replaces (--force), or
    what `open()` would give a new one (0666 less the umask). The temporary file is created
    private (mkstemp: 0600) and that mode would survive the rename: a server running as
    another user could not read the model."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask
