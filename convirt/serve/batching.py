"""Micro-batching: requests that arrive together are run as one batch.

Written here because the serving libraries that batch (Triton, Ray Serve, TorchServe) are whole
servers; this is the one piece a FastAPI app needs. Callers put an item and wait (a thread with
``batcher(item)``, a coroutine with ``await batcher.run(item)``); one thread takes the first item
queued, then everything queued behind it up to ``max_batch``, waits for more until ``max_wait_s``
has passed since it took the first (no wait by default), and runs ``function`` on the list.

With no wait a lone call runs at once, and batches grow with load by themselves: the calls that
arrive while one batch runs form the next.
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

    def __init__(self, function: Callable[[list[Any]], list[Any]], max_batch: int = 16, max_wait_s: float = 0.0):
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_s >= 0, got {max_batch} and {max_wait_s}")
        self.function = function
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.batches: list[int] = []  # sizes of the batches run, for tests and benchmarks (last 1000)
        self._queue: queue.SimpleQueue[tuple[Any, Future]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="convirt-microbatch", daemon=True)
        self._thread.start()

    def submit(self, item: Any) -> Future:
        """Queue ``item``; the future of its result."""
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
            pending = self._take()
            try:
                results = self.function([item for item, _ in pending])
                for (_, future), result in zip(pending, results):
                    future.set_result(result)
            except Exception as error:  # every caller of the batch gets the error, the thread goes on
                for _, future in pending:
                    future.set_exception(error)
            self.batches = [*self.batches[-999:], len(pending)]
