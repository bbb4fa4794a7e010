"""The HTTP API of the case service (FastAPI): diagnose, search, cases, info, health.

Every refusal is a 4xx with a one-line ``detail``; an unexpected error answers 500 with only a
request id, and its log line names the request, the exception's type and where it was raised, never
its message (which may hold a path or an id). Logs carry request ids, timings and upload hashes,
never file names, patient ids or report text. With a token, every ``/v1`` call needs
``Authorization: Bearer TOKEN`` (compared in constant time); any host but loopback requires one.

Bounds, whatever the callers do: a request body past the upload limit is refused with 413 as it
streams in (from its ``Content-Length`` before a byte is read), at most
``max_active`` requests run and ``max_waiting`` wait (503 with ``Retry-After`` past that), and each
has a deadline (:mod:`convirt.serve.admission`).

The query endpoints are coroutines that await the service's micro-batches: a request holds no
worker thread while its batch runs, and only an upload's decode goes to one.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import time
import traceback
import uuid
from collections.abc import Awaitable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.middleware.trustedhost import TrustedHostMiddleware

import convirt
from convirt.serve.admission import Admission, Limits
from convirt.serve.cases import CaseNotFound
from convirt.serve.explain import SaliencyBusy, saliency_refusal
from convirt.serve.schema import Case, Diagnosis, Info, Search
from convirt.serve.service import CaseService
from convirt.serve.uploads import UploadError, read_upload

log = logging.getLogger("convirt.serve")
PAGE = Path(__file__).parent / "static" / "index.html"
MAX_K = 100
FORM_OVERHEAD = 64 * 1024  # a multipart body's boundaries and small fields beside its image


# The Host names a service bound to loopback answers by default: anything else is a page elsewhere
# reaching this service through the clinician's own browser (DNS rebinding).
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (``localhost``, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def where_raised(error: BaseException) -> str:
    """``file.py:line in function`` of the innermost frame of ``error``: enough to find a bug, and
    free of the message, which may carry a path or an id."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "?"
    frame = frames[-1]
    return f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}"


def create_app(
    service: CaseService,
    token: str | None = None,
    host: str = "127.0.0.1",
    allowed_hosts: Sequence[str] = (),
    limits: Limits = Limits(),
) -> FastAPI:
    """The FastAPI app over ``service``.

    Args:
        service: The case service.
        token: The bearer token every ``/v1`` call must carry; required when ``host`` is not loopback.
        host: The address the app is served on (``convirt serve --host``).
        allowed_hosts: ``Host`` header names answered besides the loopback names (and ``host``
            itself when it is not a wildcard); any other is refused with 400 (Starlette's
            ``TrustedHostMiddleware``).
        limits: The largest upload, requests at once and waiting, and a request's deadline.

    Raises:
        ValueError: ``host`` reaches other machines and no token was given.
    """
    if not is_loopback(host) and not token:
        raise ValueError(f"--host {host} reaches other machines: pass --token-file (or set CONVIRT_TOKEN)")
    app = FastAPI(
        title="convirt serve",
        version=convirt.__version__,
        description="Case search and explained zero-shot diagnosis of chest radiographs. A research tool, "
        "not a diagnostic device.",
    )

    names = [*LOOPBACK_HOSTS, *allowed_hosts]
    if host not in ("0.0.0.0", "::", "") and host not in names:
        names.append(host)
    # Added last, run first: the Host check, then admission (the request log wraps both).
    app.add_middleware(
        Admission,
        max_body=limits.max_upload_bytes + FORM_OVERHEAD,
        max_active=limits.max_active,
        max_waiting=limits.max_waiting,
        deadline_s=limits.deadline_s,
    )
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=names)

    async def authorised(request: Request) -> None:
        if token is None:
            # create_app trusts its host argument; a server started on another address answers only
            # loopback callers (uvicorn names the socket's own address in the scope).
            served_on = (request.scope.get("server") or ("127.0.0.1", 0))[0]
            if not is_loopback(served_on):
                raise HTTPException(403, "this service has no token: it answers on loopback only (--token-file)")
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    @app.middleware("http")
    async def request_log(request: Request, call_next: Any) -> Response:
        request.state.id = uuid.uuid4().hex[:12]
        start = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception as error:  # a bug: its type and place, never its message (paths, ids)
            log.error("request %s failed: %s at %s", request.state.id, type(error).__name__, where_raised(error))
            response = JSONResponse({"detail": f"internal error (request {request.state.id})"}, status_code=500)
        route = request.scope.get("route")
        log.info(
            "request %s %s %s -> %d in %.1f ms",
            request.state.id,
            request.method,
            getattr(route, "path", "?"),  # the route's template: no case id or query text
            response.status_code,
            (time.perf_counter() - start) * 1000,
        )
        response.headers["X-Request-Id"] = request.state.id
        # No page elsewhere may embed the archive's images or read the answers as its own.
        response.headers["Cross-Origin-Resource-Policy"] = "same-origin"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.exception_handler(UploadError)
    async def refused(request: Request, error: UploadError) -> JSONResponse:
        return JSONResponse({"detail": error.reason}, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        # One line naming each field and what is wrong with it; never the value sent back.
        def said(problem: dict[str, Any]) -> str:
            field = ".".join(str(part) for part in problem.get("loc", ())[1:]) or "body"
            message = str(problem.get("msg", "invalid"))
            if "UploadFile" in message:  # a text where a file belongs: pydantic names Python classes
                message = "send a file (a multipart/form-data part with a filename)"
            return f"{field}: {message}"

        problems = "; ".join(said(problem) for problem in error.errors())
        return JSONResponse({"detail": " ".join(problems.split())[:300] or "invalid request"}, status_code=422)

    # Uploads are hashed and decoded in threads of their own, max_decoding at once (a DICOM at the pixel
    # limit peaks at ~1 GB, measured): a request cut off at its deadline leaves its decode running in
    # one of them, never a place freed for another beside it; one that never started is dropped.
    decoders = ThreadPoolExecutor(limits.max_decoding, thread_name_prefix="convirt-decode")

    def decode(request_id: str, data: bytes) -> Image.Image:
        log.info("request %s upload sha256 %s (%d bytes)", request_id, hashlib.sha256(data).hexdigest()[:16], len(data))
        return read_upload(data, limits.max_upload_bytes)

    async def upload(request: Request, image: UploadFile) -> Image.Image:
        data = await image.read(limits.max_upload_bytes + 1)
        return await asyncio.get_running_loop().run_in_executor(decoders, decode, request.state.id, data)

    async def answer_for_case(pending: Awaitable[Any], unknown: str) -> Any:
        """An archive case's answer, its refusals as 4xx: no such case (404), no stored vector (409)."""
        try:
            return await pending
        except CaseNotFound:
            raise HTTPException(404, unknown) from None
        except ValueError as error:
            raise HTTPException(409, str(error)) from None

    def k_in_range(k: int) -> int:
        """``k`` itself, or a 400 when it lies outside ``1..MAX_K``."""
        if not 1 <= k <= MAX_K:
            raise HTTPException(400, f"k must lie in 1..{MAX_K}, got {k}")
        return k

    def case_id(text: str) -> int:
        # Ids are looked up in the index, never used as paths: anything but a plain number is unknown.
        if not (text.isascii() and text.isdigit()) or len(text) > 12:  # "²" is a digit to str.isdigit
            raise HTTPException(404, "unknown case id")
        return int(text)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        """The page: drop a radiograph, read its findings, browse similar cases (one file, no CDN)."""
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.exception_handler(SaliencyBusy)
    async def busy(request: Request, error: SaliencyBusy) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=503, headers={"Retry-After": "5"})

    @app.get("/healthz")
    async def healthz() -> Response:
        """200 while the service can answer (a dead query worker is started again first); 503 when a
        worker cannot be started or is stuck in one batch. In the event loop: no thread needed."""
        if service.healthy():
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "unhealthy: a query worker is dead or stuck"}, status_code=503)

    api = APIRouter(prefix="/v1", dependencies=[Depends(authorised)])  # every /v1 call: the token, when set

    @api.get("/info", response_model=Info)
    async def info() -> dict[str, Any]:
        return service.info()

    @api.post("/diagnose", response_model=Diagnosis)
    async def diagnose(
        request: Request,
        image: UploadFile | None = File(None),
        case: str | None = Form(None),
        saliency: bool = Form(False),
        k: int | None = Form(None),
    ) -> dict[str, Any]:
        """Per-finding probabilities with their observations, optional saliency maps, and the kNN vote,
        of an uploaded image or of an archive case (its stored vector; it and its patient left out of
        the vote). Saliency is refused (409) where the model runs without gradients (--runtime onnx)."""
        if service.classifier is None:
            raise HTTPException(
                409, "this service was started without --descriptors: it searches, it does not diagnose"
            )
        if (image is None) == (case is None):
            raise HTTPException(400, "send one of an image or a case id")
        k = k_in_range(k) if k is not None else None
        if saliency and (refusal := saliency_refusal(service.loaded.model)):  # an onnxruntime model: no gradients
            raise HTTPException(409, refusal)
        if case is not None:
            answer = service.diagnose_case_async(case_id(case), saliency=saliency, k=k)
            return await answer_for_case(answer, "unknown case id, or a case without an image for saliency")
        assert image is not None
        return await service.diagnose_async(await upload(request, image), saliency=saliency, k=k)

    @api.post("/search", response_model=Search)
    async def search(
        request: Request,
        image: UploadFile | None = File(None),
        text: str | None = Form(None),
        case: str | None = Form(None),
        k: int = Form(10),
        patient_id: str | None = Form(None),
    ) -> dict[str, Any]:
        """The k nearest archive cases of an image (its patient left out when given), of a text, or of
        an archive case (its stored vector; the case and its patient left out)."""
        if sum((image is not None, bool(text), case is not None)) != 1:
            raise HTTPException(400, "send one of an image, a text or a case id")
        if case is not None:
            return {
                "cases": await answer_for_case(
                    service.search_case_async(case_id(case), k_in_range(k)), "unknown case id"
                )
            }
        if image is not None:
            return {"cases": await service.search_image_async(await upload(request, image), k_in_range(k), patient_id)}
        if not service.loaded.has_text:
            raise HTTPException(409, "this model has no text tower: search by image")
        return {"cases": await service.search_text_async(str(text)[:2000], k_in_range(k))}

    @api.get("/cases/{case}", response_model=Case)
    async def case(case: str) -> dict[str, Any]:
        try:
            return service.case(case_id(case))
        except CaseNotFound:
            raise HTTPException(404, "unknown case id") from None

    @api.get("/cases/{case}/image")
    def case_image(case: str) -> Response:
        try:
            return Response(service.case_image(case_id(case)), media_type="image/jpeg")
        except CaseNotFound:
            raise HTTPException(404, "unknown case id, or a case without an image") from None

    app.include_router(api)
    return app
