"""unfold.interrupts: an interrupt kept where it could not be raised stops the next publish."""

from __future__ import annotations

from pathlib import Path

import pytest

from unfold import interrupts
from unfold.onnx_files import publish_file


class _Interrupt(BaseException):
    pass


def test_a_deferred_interrupt_stops_a_finished_file_from_being_put_into_place(
        tmp_path: Path) -> None:
    staged = tmp_path / "staged"
    staged.write_bytes(b"complete")
    interrupts.defer(_Interrupt())
    try:
        with pytest.raises(_Interrupt):
            publish_file(staged, tmp_path / "final", force=False)
    finally:
        interrupts._deferred.clear()
    assert not (tmp_path / "final").exists()
    publish_file(staged, tmp_path / "final", force=False)
    assert (tmp_path / "final").read_bytes() == b"complete"
