"""``convirt serve``: the case-search and explained-diagnosis API over an index folder (uvicorn)."""

from __future__ import annotations

import argparse

from convirt.cli.common import add_checkpoint_arguments, add_runtime_argument, model_from_args


def add_parsers(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="serve case search and explained diagnosis over an index (API + docs)")
    add_checkpoint_arguments(serve, help="the model the index was built with")
    add_runtime_argument(serve)
    serve.add_argument("--index", required=True, help="index folder (`convirt index build`)")
    serve.add_argument(
        "--descriptors", help="descriptor set for /v1/diagnose (a shipped name or YAML); none: search only"
    )
    serve.add_argument(
        "--calibration",
        help="calibration.json of `convirt zeroshot --output` for these descriptors: the findings it covers show a "
        "calibrated probability beside their raw score",
    )
    serve.add_argument(
        "--operating-point",
        metavar="RULE",
        help="operating point of --calibration whose threshold marks findings (youden, sensitivity>=0.90, ...; "
        "default: youden where the file carries it, else its first rule; none when it carries no operating point)",
    )
    serve.add_argument(
        "--images",
        help="the tars of the indexed images, for an index built from shards: a folder of them (convirt shards "
        "output or other tools' shards: jpg, png or webp members) or a brace pattern of local tars",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (any but loopback needs a token)")
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
        "--token-file", help="file whose first line is the bearer token of every /v1 call (or set CONVIRT_TOKEN)"
    )
    serve.add_argument(
        "--token", help="the bearer token itself: visible to every user of the machine (warned); prefer --token-file"
    )
    serve.add_argument("--ssl-certfile", help="TLS certificate chain (PEM): serve HTTPS")
    serve.add_argument("--ssl-keyfile", help="TLS private key (PEM) of --ssl-certfile")
    serve.add_argument(
        "--show-field",
        action="append",
        default=[],
        choices=("key", "study_id"),
        help="also show this case field (repeatable); off by default: keys and study ids often hold the patient id",
    )
    serve.add_argument("--max-upload-mb", type=float, default=32.0, help="largest upload accepted")
    serve.add_argument("--max-active", type=int, default=16, help="requests served at once")
    serve.add_argument(
        "--max-decoding", type=int, default=2, help="uploads decoded at once (a DICOM at the pixel limit takes ~1 GB)"
    )
    serve.add_argument("--max-waiting", type=int, default=64, help="requests waiting their turn; more: 503")
    serve.add_argument("--deadline-s", type=float, default=60.0, help="longest a request may take (503 past it)")
    serve.add_argument(
        "--shutdown-grace-s", type=float, default=30.0, help="on SIGTERM, how long requests in flight may finish"
    )
    serve.add_argument("--knn", type=int, default=10, help="neighbours of the kNN vote beside each diagnosis")
    serve.add_argument(
        "--threads",
        type=int,
        help="torch (or onnxruntime) and faiss threads (default: every core this process may use but one)",
    )
    serve.add_argument(
        "--batch-wait-ms", type=float, default=5.0, help="how long a batch of queries waits for company (0: never)"
    )
    serve.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from convirt.serve.admission import Limits
    from convirt.serve.app import is_loopback
    from convirt.serve.calibrated import load_served_calibration
    from convirt.serve.token import read_token

    # Everything the command line can get wrong, before the model loads.
    token = read_token(args.token, args.token_file)
    if not is_loopback(args.host) and not token:  # create_app checks it too
        raise ValueError(f"--host {args.host} reaches other machines: pass --token-file (or set CONVIRT_TOKEN)")
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        raise ValueError("TLS needs both --ssl-certfile and --ssl-keyfile")
    # The calibration file and its rule, checked against the file's own findings (the service checks the descriptors').
    calibration = load_served_calibration(args.calibration, args.operating_point, None if args.descriptors else ())
    limits = Limits(
        int(args.max_upload_mb * 1024 * 1024), args.max_active, args.max_decoding, args.max_waiting, args.deadline_s
    )
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
        model_from_args(args),
        args.index,
        args.descriptors,
        args.images,
        args.knn,
        args.batch_wait_ms,
        threads,
        show_fields=args.show_field,
        calibration=calibration.calibration if calibration else None,
        operating_point=args.operating_point,
    )
    service.warm_up()
    app = create_app(service, token=token, host=args.host, allowed_hosts=args.allowed_host, limits=limits)
    scheme = "https" if args.ssl_certfile else "http"
    print(
        f"convirt serve: {scheme}://{args.host}:{args.port}/docs ({len(service.metadata)} cases, {threads} threads, "
        f"{args.runtime} runtime)",
        flush=True,
    )
    # The app's own request lines (request id, route, status, time, upload hash) instead of uvicorn's access log.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("convirt.serve").addHandler(handler)
    logging.getLogger("convirt.serve").setLevel(logging.INFO)
    logging.getLogger("convirt.serve").propagate = False  # once, through the handler above
    # uvicorn stops taking connections on SIGTERM/SIGINT and lets those in flight finish (up to the grace).
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="info",
        access_log=False,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        timeout_graceful_shutdown=int(args.shutdown_grace_s),
    )
