"""Micro-batching: requests that arrive together are run as one batch.

Written here because the serving libraries that batch (Triton, Ray Serve, TorchServe) are whole
servers; this is the one piece a FastAPI app needs. Callers put an item and wait (a thread with
``batcher(item)``, a coroutine with ``await batcher.run(item)``); one thread takes the first item
queued, then everything queued behind it up to ``max_batch``, waits for more until ``max_wait_s``
has passed since it took the first (no wait by default), and runs ``function`` on the list.

With no wait a lone call runs at once, and batches grow with load by themselves: the calls that
arrive while one batch runs form the next.

The worker cannot be killed by its callers: a caller that went away (a cancelled coroutine, a
timeout) is dropped from its batch before it runs, a batch function that raises or answers the wrong
number of results fails that batch's callers with a one-line error, and a worker thread that died
anyway is started again by the next call. :meth:`MicroBatcher.healthy` says whether the worker is
alive and not stuck in one batch (``/healthz`` answers 503 otherwise).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class MicroBatcher:
    """Runs ``function(items) -> results`` (one result per item, in order) on batches of concurrent calls.

    Args:
        function: The batch function.
        max_batch: Most items in one call of ``function``.
        max_wait_s: How long a batch may wait for company after its first item (0: take only what is queued).
    """

    def __init__(
        self,
        function: Callable[[list[Any]], list[Any]],
        max_batch: int = 16,
        max_wait_s: float = 0.0,
        stuck_after_s: float = 120.0,
    ):
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_s >= 0, got {max_batch} and {max_wait_s}")
        self.function = function
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.stuck_after_s = stuck_after_s
        self.batches: list[int] = []  # sizes of the batches run, for tests and benchmarks (last 1000)
        self.restarts = 0  # worker threads started again after one died
        self._queue: queue.SimpleQueue[tuple[Any, Future]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running_since: float | None = None  # when the batch in flight started
        self._thread = self._start()

    def _start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="convirt-microbatch", daemon=True)
        thread.start()
        return thread

    def healthy(self) -> bool:
        """The worker is alive and no batch has run longer than ``stuck_after_s``."""
        since = self._running_since
        return self._thread.is_alive() and (since is None or time.monotonic() - since < self.stuck_after_s)

    def revive(self) -> None:
        """Start the worker again if it died (each query does this first; ``/healthz`` too, so that a
        service taken out of rotation for a dead worker is not left waiting for a query to restart it)."""
        if not self._thread.is_alive():
            with self._lock:
                if not self._thread.is_alive():
                    self.restarts += 1
                    self._thread = self._start()

    def submit(self, item: Any) -> Future:
        """Queue ``item``; the future of its result (a worker that died is started again first)."""
        self.revive()
        future: Future = Future()
        self._queue.put((item, future))
        return future

    def __call__(self, item: Any) -> Any:
        """The result of ``item``, computed in a batch with the items queued beside it (blocks the thread)."""
        return self.submit(item).result()

    async def run(self, item: Any) -> Any:
        """The result of ``item``, awaited without holding a thread (for async endpoints)."""
        return await asyncio.wrap_future(self.submit(item))

    def _take(self) -> list[tuple[Any, Future]]:
        pending = [self._queue.get()]
        deadline = time.monotonic() + self.max_wait_s
        while len(pending) < self.max_batch:
            try:
                pending.append(self._queue.get_nowait())
                continue
            except queue.Empty:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                pending.append(self._queue.get(timeout=left))
            except queue.Empty:
                break
        return pending

    def _run(self) -> None:
        while True:
            # A caller that went away before its batch ran (a cancelled coroutine) is dropped; a running
            # future can no longer be cancelled, so every result below finds its caller waiting.
            pending = [(item, future) for item, future in self._take() if future.set_running_or_notify_cancel()]
            if not pending:
                continue
            self._running_since = time.monotonic()
            try:
                results = self.function([item for item, _ in pending])
                if len(results) != len(pending):
                    raise RuntimeError(f"the batch answered {len(results)} results for {len(pending)} queries")
                for (_, future), result in zip(pending, results):
                    future.set_result(result)
            except BaseException as error:  # every caller of the batch gets the error
                failure = error if isinstance(error, Exception) else RuntimeError("the query worker stopped")
                for _, future in pending:
                    if not future.done():
                        future.set_exception(failure)
                if not isinstance(error, Exception):
                    raise  # the thread ends (SystemExit, ...); the next call starts another
            finally:
                self._running_since = None
            self.batches = [*self.batches[-999:], len(pending)]
