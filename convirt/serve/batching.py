"""Micro-batching: requests that arrive together are run as one batch.

Written here because the serving libraries that batch (Triton, Ray Serve, TorchServe) are whole
servers; this is the one piece a FastAPI app needs. Callers (the app's worker threads) put an item
and wait; one thread takes whatever is queued, up to ``max_batch``, waiting at most ``max_wait_s``
for more once the first arrives, and runs ``function`` on the list.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class MicroBatcher:
    """Runs ``function(items) -> results`` (one result per item, in order) on batches of concurrent calls."""

    def __init__(self, function: Callable[[list[Any]], list[Any]], max_batch: int = 16, max_wait_s: float = 0.005):
        self.function = function
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.batches: list[int] = []  # sizes of the batches run, for tests and benchmarks (last 1000)
        self._queue: queue.Queue[tuple[Any, Future]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="convirt-microbatch", daemon=True)
        self._thread.start()

    def __call__(self, item: Any) -> Any:
        """The result of ``item``, computed in a batch with the items queued beside it."""
        future: Future = Future()
        self._queue.put((item, future))
        return future.result()

    def _run(self) -> None:
        while True:
            pending = [self._queue.get()]
            while len(pending) < self.max_batch:
                try:
                    pending.append(self._queue.get(timeout=self.max_wait_s))
                except queue.Empty:
                    break
            try:
                results = self.function([item for item, _ in pending])
                for (_, future), result in zip(pending, results):
                    future.set_result(result)
            except Exception as error:  # every caller of the batch gets the error, the thread goes on
                for _, future in pending:
                    future.set_exception(error)
            self.batches = [*self.batches[-999:], len(pending)]
