"""An interrupt Python could not raise where it arrived, raised at the next point that can.

A signal handler's exception that lands in a weakref callback, a `__del__` or a garbage
collector run is printed as "Exception ignored" and the program goes on. The CLI hands such an
interrupt here (`defer`); every progress line and the moment before any finished file is put
into place (`unfold.onnx_files.publish_file`) call `raise_deferred`, so an interrupted run
still writes nothing. Seen in CI: SIGTERM during torch's import, swallowed by importlib's
weakref callback, then a whole convert written before "interrupted"."""

from __future__ import annotations

_deferred: list[BaseException] = []


def defer(exc: BaseException) -> None:
    """Keep `exc` (an interrupt that could not be raised) for the next `raise_deferred`."""
    _deferred.append(exc)


def raise_deferred() -> None:
    """Raise the first interrupt `defer` kept, if any."""
    if _deferred:
        raise _deferred[0]
