"""`unfold`: the entry point. It imports almost nothing itself, so that the first thing it
does is take over SIGINT and SIGTERM: an interrupt at any moment, even while torch and
onnxruntime are still importing, ends with one line `interrupted` and exit 130 (143 for
SIGTERM), and, because it arrives as an exception, every temporary file is removed on the way
out (`unfold.onnx_files.save_onnx_atomic`). Nothing is written by then: outputs are renamed
into place only once complete. An interrupt that lands where Python cannot raise (a weakref
callback during an import) is kept by `unfold.interrupts` and raised at the next progress line
or before any file is put into place."""

from __future__ import annotations

import signal
import sys
from types import FrameType

from unfold import interrupts


class Interrupted(BaseException):
    """SIGINT or SIGTERM. A BaseException that is not KeyboardInterrupt, so that neither an
    `except Exception` nor click's own Ctrl-C handling ("Aborted!", exit 1) catches it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_received: list[int] = []


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    raise Interrupted(signum)


def _unraisable(unraisable: sys.UnraisableHookArgs) -> None:
    if isinstance(unraisable.exc_value, Interrupted):
        interrupts.defer(unraisable.exc_value)
        return
    sys.__unraisablehook__(unraisable)


def _interrupted(signum: int) -> None:
    # (a second Ctrl-C while this prints must not print a traceback either)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("interrupted", file=sys.stderr)
    sys.exit(128 + signum)


def run() -> None:
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    sys.unraisablehook = _unraisable
    try:
        from cli.app import app

        app()
    except Interrupted as exc:
        _interrupted(exc.signum)
    except BaseException:
        # An interrupt landing inside an extension module's import comes out as some other
        # error (onnxruntime: "ImportError: initialization failed"): still an interrupt.
        if _received:
            _interrupted(_received[0])
        raise


if __name__ == "__main__":
    run()
