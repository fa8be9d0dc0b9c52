"""The process pool of the store's parallel work (ingest, symmetry keys): forked workers with default signals."""

from __future__ import annotations

import gc
import multiprocessing.pool
from typing import Any


def worker_pool(processes: int, start_method: str | None) -> Any:
    """A process pool for the store's workers (:func:`matmeta.store.records.work_chunk`, symmetry keys).

    With ``fork`` the heavy modules the workers need are imported here first, once, and the
    children inherit them; with ``spawn``/``forkserver`` each worker imports them itself.
    """
    import multiprocessing

    method = start_method or ("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    if method == "fork":
        import pymatgen.core  # noqa: F401 - inherited by the forked workers
        import pymatgen.optimization.neighbors  # noqa: F401
        import spglib  # noqa: F401

        import matmeta.families  # noqa: F401
        import matmeta.io  # noqa: F401
    context = multiprocessing.get_context(method)
    if method != "fork" or gc.get_freeze_count():  # (a caller's own freeze is left as it is)
        return _QuietPool(processes=processes, context=context, initializer=default_signals)
    # forked workers inherit every object of this process (torch, pymatgen, a caller's data); frozen,
    # their garbage collector leaves those alone instead of walking them (and copying their pages)
    gc.freeze()
    try:
        return _QuietPool(processes=processes, context=context, initializer=default_signals)
    finally:
        gc.unfreeze()


def default_signals() -> None:
    """Pool-worker initializer: SIGTERM and SIGINT back to their defaults.

    A forked worker inherits its parent's Python signal handlers. Where the parent holds its own SIGTERM
    handler (Flower's ``start_server`` installs one that logs, sends telemetry and stops the parent's gRPC
    server before exiting, and keeps it), the worker runs that instead of dying on ``Pool.terminate()``; in
    a forked copy it can wait for ever, and the ingest hung in its final ``join()`` (seen in a test run).
    """
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


class _QuietPool(multiprocessing.pool.Pool):
    """``multiprocessing.Pool`` whose worker-handler thread does not wake on every result.

    CPython's handler also waits on the result pipe, which the result-handler thread reads: while
    a result sits there it spins (about 0.8 s of CPU in a 6,433-structure ingest on 2 cores, taken
    from the workers). It needs to wake only when a worker exits or the pool changes state.
    """

    def _get_sentinels(self) -> list[Any]:
        return [self._change_notifier._reader]  # type: ignore[attr-defined]
