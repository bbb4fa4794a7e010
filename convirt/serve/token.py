"""Where the service's bearer token comes from: a file, ``$CONVIRT_TOKEN`` or (discouraged) the command line.

A token on the command line is visible to every user of the machine (``ps``, ``/proc/*/cmdline``):
it is accepted with a warning. A token file should be readable by its owner only; one that others
can read is accepted with a warning too.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

TOKEN_ENV = "CONVIRT_TOKEN"
log = logging.getLogger("convirt.serve")


def read_token(token: str | None = None, token_file: str | os.PathLike[str] | None = None) -> str | None:
    """The token: ``token_file``'s first line, else ``token`` (with a warning), else ``$CONVIRT_TOKEN``, else ``None``.

    Raises:
        ValueError: Both ``token`` and ``token_file``; a file that cannot be read, or holds no token.
    """
    if token and token_file:
        raise ValueError("give one of --token and --token-file")
    if token_file:
        path = Path(token_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"--token-file {path}: cannot read it ({type(error).__name__})") from None
        value = lines[0].strip() if lines else ""
        if not value:
            raise ValueError(f"--token-file {path}: holds no token on its first line")
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("--token-file %s can be read by others: chmod 600 it", path)
        return value
    if token:
        log.warning(
            "a token on the command line is visible to every user of this machine: use --token-file or $%s", TOKEN_ENV
        )
        return token
    return os.environ.get(TOKEN_ENV) or None
