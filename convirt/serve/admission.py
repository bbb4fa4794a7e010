"""Admission control of the API: how many requests run at once, how many may wait, and how long one may take.

A pure ASGI middleware, written here because neither Starlette nor uvicorn has one that fits:
uvicorn's ``--limit-concurrency`` counts open connections (an idle keep-alive connection holds a
place) and answers a bare 503 with no ``Retry-After``; Starlette has no queue or deadline at all.

- A body declared (``Content-Length``) past ``max_body`` is refused with 413 before a byte of it is
  read; one streamed without a length is cut off with 413 as it passes the limit. (FastAPI's own
  ``max_body_size`` does both, but answers a declared one in plain text over whatever the app says;
  this answers like every other refusal, a one-line JSON ``detail``.)
- At most ``max_active`` requests are inside the app; up to ``max_waiting`` more wait their turn
  (without their body read: uvicorn stops reading a socket whose request is not being read). A
  request past both is answered 503 with ``Retry-After`` at once: a burst costs the service a
  queue of bounded length, never memory proportional to the burst.
- A request that has not answered within ``deadline_s`` of its arrival (waiting included) is
  cancelled and answered 503 with ``Retry-After``; its batch query, if not yet run, is dropped
  (:class:`convirt.serve.batching.MicroBatcher`).
- ``exempt`` paths (``/healthz``) are never queued or cut short: a load balancer must still learn
  the service's health when it is busy.
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from convirt.serve.uploads import MAX_UPLOAD_BYTES


class PerLoop:
    """An ``asyncio.Semaphore`` of ``size`` places per event loop (a semaphore belongs to the loop it
    first waits in: uvicorn serves from one, a test client may call from several)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )

    def __call__(self) -> asyncio.Semaphore:
        """The running loop's semaphore."""
        loop = asyncio.get_running_loop()
        if loop not in self._semaphores:
            self._semaphores[loop] = asyncio.Semaphore(self.size)
        return self._semaphores[loop]


class BodyTooLarge(HTTPException):
    """A request body read past the limit: raised from ``receive``, answered 413 by the app's handler."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the limit of {limit} bytes")


@dataclass(frozen=True)
class Limits:
    """What one service accepts: the largest upload, requests at once and waiting, and a request's deadline.

    Memory is held to ``max_active`` upload bodies at their largest and ``max_decoding`` images being
    decoded at once (each at most :data:`convirt.data.images.MAX_IMAGE_PIXELS` pixels) beside the model.
    """

    max_upload_bytes: int = MAX_UPLOAD_BYTES
    max_active: int = 16
    max_decoding: int = 2
    max_waiting: int = 64
    deadline_s: float | None = 60.0

    def __post_init__(self) -> None:
        if self.max_upload_bytes < 1 or self.max_active < 1 or self.max_decoding < 1 or self.max_waiting < 0:
            raise ValueError(
                "--max-upload-mb, --max-active and --max-decoding must be positive and --max-waiting >= 0, got "
                f"{self.max_upload_bytes} bytes, {self.max_active}, {self.max_decoding}, {self.max_waiting}"
            )
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise ValueError(f"--deadline-s must be positive, got {self.deadline_s}")


class Admission:
    """Bounded concurrency, a bounded queue and a per-request deadline around an ASGI app.

    Args:
        app: The app.
        max_body: Largest request body declared, in bytes (``None``: no limit here).
        max_active: Requests inside the app at once.
        max_waiting: Requests waiting for a place; one more is answered 503.
        deadline_s: Longest a request may take from its arrival (``None``: no deadline).
        exempt: Paths admitted at once, with no deadline.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_body: int | None = None,
        max_active: int = 16,
        max_waiting: int = 64,
        deadline_s: float | None = 60.0,
        exempt: Sequence[str] = ("/healthz",),
    ) -> None:
        if max_active < 1 or max_waiting < 0 or (deadline_s is not None and deadline_s <= 0):
            raise ValueError(
                f"max_active must be >= 1, max_waiting >= 0 and deadline_s > 0, got {max_active}, {max_waiting}, "
                f"{deadline_s}"
            )
        self.app = app
        self.max_body = max_body
        self.max_active = max_active
        self.max_waiting = max_waiting
        self.deadline_s = deadline_s
        self.exempt = frozenset(exempt)
        self.active = 0
        self.waiting = 0
        self.refused = 0  # answered 503 because the queue was full
        self.timed_out = 0  # answered 503 past their deadline
        self._places = PerLoop(max_active)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if self.max_body is not None and declared is not None and declared > self.max_body:
            too_long = f"the request body is over the limit of {self.max_body} bytes ({declared} declared)"
            await _answer(send, 413, too_long)
            return
        # Counted in the same step as the check (no await between): a burst cannot pass it.
        if self.active + self.waiting >= self.max_active + self.max_waiting:
            self.refused += 1
            await _answer(send, 503, "the service is busy: too many requests are waiting; try again shortly", 1)
            return
        self.waiting += 1
        queued = [True]  # until the request takes a place
        started, read = False, 0

        async def limited() -> Message:
            nonlocal read
            message = await receive()
            if message["type"] == "http.request" and self.max_body is not None:
                read += len(message.get("body", b""))
                if read > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        arrived = time.monotonic()
        try:
            await asyncio.wait_for(self._admitted(scope, limited, tracked, queued), self.deadline_s)
        except BodyTooLarge as error:  # read outside the app's handlers
            if not started:
                await _answer(send, 413, str(error.detail))
        except asyncio.TimeoutError:  # the builtin TimeoutError from Python 3.11
            self.timed_out += 1
            if not started:  # once its answer has begun, the connection is all that can be cut
                waited = time.monotonic() - arrived
                await _answer(
                    send,
                    503,
                    f"the request took longer than its deadline of {self.deadline_s:g} s ({waited:.1f} s): "
                    "try again shortly",
                    5,
                )
        finally:
            if queued[0]:  # went away (deadline, disconnect) before it took a place
                self.waiting -= 1

    async def _admitted(self, scope: Scope, receive: Receive, send: Send, queued: list[bool]) -> None:
        places = self._places()
        await places.acquire()
        self.waiting -= 1
        queued[0] = False
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
            places.release()


def _declared_length(scope: Scope) -> int | None:
    """The request's ``Content-Length``, ``None`` when it has none (or not a number: the server refuses those)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


async def _answer(send: Send, status: int, detail: str, retry_after_s: int | None = None) -> None:
    """``status`` with a one-line JSON ``detail`` (and ``Retry-After`` when given)."""
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after_s is not None:
        headers.append((b"retry-after", str(retry_after_s).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
