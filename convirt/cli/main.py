"""The ``convirt`` command: subcommands, and one-line errors instead of tracebacks."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn

from convirt import __version__
from convirt._quiet import quiet_dependencies

_LIGHTNING = ("fit", "validate", "test")
_TEXT_PRETRAINING = "pretrain-text"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``convirt: error: ...``) instead of a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(
            2,
            f"convirt: error: {self.prog.removeprefix('convirt').strip() or 'convirt'}: {message} "
            f"(see `{self.prog} --help`)\n",
        )


def build_parser() -> argparse.ArgumentParser:
    from convirt.cli import bench, data, embed, export, index, probe, report, serve, zeroshot

    parser = _Parser(prog="convirt", description="medical vision-language contrastive pretraining")
    parser.add_argument("--version", action="version", version=f"convirt {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback behind a one-line error (also CONVIRT_DEBUG=1)"
    )
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="{phantom,shards,fit,validate,test,pretrain-text,zeroshot,probe,embed,index,export,report,bench,serve}",
    )
    data.add_parsers(sub)
    for name in _LIGHTNING:
        sub.add_parser(name, help=f"{name} with LightningCLI (`convirt {name} --help`)", add_help=False)
    sub.add_parser(
        _TEXT_PRETRAINING,
        add_help=False,
        help="adapt a model's text tower to reports (section "
        "matching on shards, no images; LightningCLI, `convirt pretrain-text --help`)",
    )
    zeroshot.add_parsers(sub)
    probe.add_parsers(sub)
    embed.add_parsers(sub)
    index.add_parsers(sub)
    export.add_parsers(sub)
    report.add_parsers(sub)
    bench.add_parsers(sub)
    serve.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug (anywhere before a lone "--") or CONVIRT_DEBUG=1: the traceback behind a one-line error.
    debug = "--debug" in argv[: argv.index("--") if "--" in argv else len(argv)] or os.environ.get(
        "CONVIRT_DEBUG", ""
    ) not in ("", "0")
    argv = [word for word in argv if word != "--debug"]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no per-load weight reports
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", force=True)
    # Lightning prints its INFO lines (and convirt's precision choice) with its own handler; they
    # also propagate here, so this handler keeps to warnings, or each would print twice.
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.WARNING)
    quiet_dependencies()  # Lightning's adverts and warnings about what convirt does on purpose
    try:
        if argv and argv[0] in _LIGHTNING:
            from convirt.training.cli import run_lightning_cli

            run_lightning_cli(argv)
            return 0
        if argv and argv[0] == _TEXT_PRETRAINING:
            from convirt.training.cli import run_lightning_cli

            run_lightning_cli(["fit", *argv[1:]], text_pretraining=True)
            return 0
        args = build_parser().parse_args(argv)
        args.run(args)
    except argparse.ArgumentError as error:  # a bad config key or value, from LightningCLI
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        _traceback(debug)
        print(f"convirt: error: {' '.join(lines[:3])}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 (only the errors of _said_in_one_line; the rest raise)
        if not isinstance(error, _said_in_one_line()):
            raise
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        _traceback(debug)
        print(
            f"convirt: error: {message}" + ("" if debug else " (--debug or CONVIRT_DEBUG=1 shows the traceback)"),
            file=sys.stderr,
        )
        return 2
    except SystemExit as exit_:  # argparse / LightningCLI usage errors: they have printed their message
        return exit_.code if isinstance(exit_.code, int) else 2
    except KeyboardInterrupt:
        print("convirt: interrupted", file=sys.stderr)
        return 130
    return 0


def _said_in_one_line() -> tuple[type[BaseException], ...]:
    """The errors said in one line: bad input and missing files or weights (OSError), a loss gone to NaN,
    and, once Lightning is loaded, its MisconfigurationException (a setting the hardware or launcher
    cannot run). Anything else is a bug: its traceback shows."""
    errors: tuple[type[BaseException], ...] = (OSError, ValueError, FloatingPointError)
    lightning = sys.modules.get("lightning.fabric.utilities.exceptions")
    return (*errors, lightning.MisconfigurationException) if lightning is not None else errors


def _traceback(debug: bool) -> None:
    """Print the exception being handled, with its chained causes, when debugging."""
    if debug:
        import traceback

        traceback.print_exc(file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
