"""Reading and writing ONNX files: clear errors for what is not a usable ONNX model, atomic
writes that never leave a partial file or overwrite one without being told to, and external
data for models over 2 GiB."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx

from unfold.errors import UnfoldError

PROTOBUF_LIMIT = 2**31 - 1


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Load and check an ONNX model (external data from beside it)."""
    path = Path(path)
    if not path.exists():
        raise UnfoldError(f"{path}: no such file")
    if path.is_dir():
        raise UnfoldError(f"{path} is a directory; give an .onnx file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise UnfoldError(f"{path} is not an ONNX model (or is truncated): "
                          f"{type(exc).__name__}: {exc}") from None
    if not model.graph.node and not model.graph.output:
        raise UnfoldError(f"{path} holds no ONNX graph (is it an ONNX file?)")
    try:
        if model.ByteSize() < PROTOBUF_LIMIT:
            onnx.checker.check_model(model, full_check=True)
        else:
            onnx.checker.check_model(str(path), full_check=True)
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
    external = model.ByteSize() >= PROTOBUF_LIMIT
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


def _write(model: onnx.ModelProto, out: Path, tmp_path: Path, data_name: str,
           external: bool) -> None:
    if not external:
        onnx.save_model(model, str(tmp_path))
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
