"""``convirt serve``: the case-search and explained-diagnosis API over an index folder (uvicorn)."""

from __future__ import annotations

import argparse
import os

from convirt.cli.common import add_checkpoint_arguments, model_from_args


def add_parsers(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="serve case search and explained diagnosis over an index (API + docs)")
    add_checkpoint_arguments(serve, help="the model the index was built with")
    serve.add_argument("--index", required=True, help="index folder (`convirt index build`)")
    serve.add_argument(
        "--descriptors", help="descriptor set for /v1/diagnose (a shipped name or YAML); none: search only"
    )
    serve.add_argument("--images", help="shard folder of the indexed images, for an index built from shards")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (any but loopback needs --token)")
    serve.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host header name answered besides the loopback names and --host (repeatable): the name "
        "clients use to reach the service; any other Host is refused (DNS rebinding)",
    )
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--token", default=os.environ.get("CONVIRT_TOKEN"), help="bearer token of every /v1 call (or CONVIRT_TOKEN)"
    )
    serve.add_argument("--max-upload-mb", type=float, default=32.0, help="largest upload accepted")
    serve.add_argument("--knn", type=int, default=10, help="neighbours of the kNN vote beside each diagnosis")
    serve.add_argument(
        "--threads", type=int, help="torch and faiss threads (default: every core this process may use but one)"
    )
    serve.add_argument(
        "--batch-wait-ms", type=float, default=5.0, help="how long a batch of queries waits for company (0: never)"
    )
    serve.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from convirt.serve.app import is_loopback

    if not is_loopback(args.host) and not args.token:  # before loading anything; create_app checks it too
        raise ValueError(f"--host {args.host} reaches other machines: pass --token (or set CONVIRT_TOKEN)")
    import logging

    import torch
    import uvicorn

    from convirt._hardware import choose_serve_threads
    from convirt.serve.app import create_app
    from convirt.serve.service import CaseService

    threads = args.threads if args.threads is not None else choose_serve_threads()
    if threads < 1 or args.batch_wait_ms < 0:
        raise ValueError(f"--threads must be >= 1 and --batch-wait-ms >= 0, got {threads} and {args.batch_wait_ms}")
    torch.set_num_threads(threads)
    service = CaseService(
        model_from_args(args), args.index, args.descriptors, args.images, args.knn, args.batch_wait_ms, threads
    )
    service.warm_up()
    app = create_app(
        service,
        token=args.token,
        max_upload=int(args.max_upload_mb * 1024 * 1024),
        host=args.host,
        allowed_hosts=args.allowed_host,
    )
    print(
        f"convirt serve: http://{args.host}:{args.port}/docs ({len(service.metadata)} cases, {threads} threads)",
        flush=True,
    )
    # The app's own request lines (request id, route, status, time, upload hash) instead of uvicorn's access log.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("convirt.serve").addHandler(handler)
    logging.getLogger("convirt.serve").setLevel(logging.INFO)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=False)
