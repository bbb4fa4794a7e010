"""Shard locations: brace patterns, ``pipe:`` commands and object stores through fsspec.

webdataset opens local paths, ``pipe:CMD`` (``pipe:aws s3 cp s3://b/x.tar -``), http(s) and
``gs://`` (through ``gsutil``) itself. This module adds fsspec for the object stores webdataset
has no opener for (``s3://``, ``gcs://``, ``az://``, ``abfs://``, and ``memory://`` for tests), and
for ``gs://`` when ``gcsfs`` is installed; the filesystem package (``s3fs``, ``gcsfs``,
``adlfs``) is the user's to install.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import IO, Any
from urllib.parse import urlparse

import webdataset as wds

# The module, not the function of the same name that the package re-exports.
_gopen = importlib.import_module("webdataset.gopen")

FSSPEC_SCHEMES = ("s3", "gcs", "az", "abfs", "abfss", "memory")
_PACKAGES = {"s3": "s3fs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs", "abfss": "adlfs"}


def open_with_fsspec(url: str, mode: str = "rb", bufsize: int = 8192, **_: Any) -> IO[bytes]:
    """webdataset opener for an fsspec URL.

    Raises:
        ImportError: The scheme's filesystem package is not installed; the message names it.
    """
    import fsspec

    scheme = urlparse(url).scheme
    try:
        handle: IO[bytes] = fsspec.open(url, mode).open()
    except ImportError as error:
        package = _PACKAGES.get(scheme, "the fsspec filesystem for it")
        raise ImportError(f"reading {scheme}:// shards needs {package}: pip install {package} ({error})") from None
    return handle


def register_fsspec(schemes: tuple[str, ...] = FSSPEC_SCHEMES) -> None:
    """Let webdataset open ``schemes`` through fsspec (done when this module is imported).

    ``gs://`` goes through fsspec too when ``gcsfs`` is installed; otherwise webdataset's
    ``gsutil`` opener keeps it.
    """
    for scheme in schemes:
        _gopen.gopen_schemes[scheme] = open_with_fsspec
    if importlib.util.find_spec("gcsfs") is not None:
        _gopen.gopen_schemes["gs"] = open_with_fsspec


def expand_shard_urls(pattern: str) -> list[str]:
    """The shard URLs of a brace pattern (``train-{000000..000009}.tar``) or of a list in one
    string separated by ``::``.

    Raises:
        ValueError: The pattern expands to nothing.
    """
    urls = [url for part in pattern.split("::") if part.strip() for url in wds.shardlists.expand_urls(part.strip())]
    if not urls:
        raise ValueError(f"no shards in {pattern!r}")
    return urls


register_fsspec()
