"""Lightning's and its dependencies' lines that tell a convirt user nothing, filtered by message.

Each filter names one message: an advert, a deprecation inside a dependency, or a warning about
something convirt does on purpose; offline, Hugging Face's progress bars are off as well. Every
other warning and log line is kept, convirt's own (``convirt: precision ...``) among them. No
import of Lightning here: the loggers are named.
"""

from __future__ import annotations

import logging
import os
import re
import warnings

# The loggers Lightning's rank_zero_info writes through (the unified and the standalone packages).
LIGHTNING_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "pytorch_lightning.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
)

# Lightning's info lines dropped: its adverts ("💡 Tip: ... try installing litlogger / litmodels"),
# the accelerators a machine does not have, and a step of its own set-up.
QUIET_LINES = re.compile(
    r"\W*Tip: "
    r"|(GPU|TPU|HPU) available: False\b"
    r"|Loading `train_dataloader` to estimate number of stepping batches"
)

# (message regex, category) of warnings dropped, each with why nobody needs to see it.
QUIET_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # Lightning's own use of a torch API that torch deprecated: nothing a user can change.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # convirt's shard stream splits its shards by worker and knows its length per epoch.
    (r"Your `IterableDataset` has `__len__` defined", UserWarning),
    # The summary counts parameters, right in any precision; only its size in MB assumes 32 bits.
    (r"Precision .* is not supported by the model summary", UserWarning),
    # Locked trunks (frozen groups, batch-norm statistics, text without dropout) train in eval mode.
    (r"Found \d+ module\(s\) in eval mode at the start of training", UserWarning),
)


class _QuietLines(logging.Filter):
    """Drops the log records whose message is one of :data:`QUIET_LINES`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return QUIET_LINES.match(record.getMessage()) is None


_FILTER = _QuietLines()


def quiet_dependencies() -> None:
    """Install the filters for this process (child processes that run ``convirt`` install their own).

    Idempotent: a second call adds nothing.
    """
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        # Offline, Hugging Face bars can only count a local load ("Loading weights: 101/101" at
        # every model a command opens): no download progress to lose. Read when the hub is imported.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    for message, category in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
