"""Data-set files on disk: fetch into a temp file beside the target, verify MD5, then atomically rename.

Also the errors that name a missing or corrupt file and how to fix it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from dnnlab.errors import DataError

log = logging.getLogger(__name__)


def _fetch_url(url: str, dest: Path) -> None:
    """Stream ``url`` into ``dest`` (tests replace this function to serve local files)."""
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out, length=1 << 20)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, dest: Path, md5: str) -> None:
    """Download ``url`` to ``dest``; nothing is left at ``dest`` (or beside it) unless it verifies."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(tmp_name)
    log.info("Downloading %s to %s", url, dest)
    try:
        try:
            _fetch_url(url, tmp)
        except Exception as e:
            raise DataError(f"Could not download {url} ({e}). Check the network, or download "
                            f"{dest.name} yourself into {dest.parent} and run again.") from e
        got = _md5(tmp)
        if got != md5:
            raise DataError(f"Checksum mismatch for {dest.name} downloaded from {url}: MD5 is {got}, "
                            f"expected {md5}. The download was deleted; run again, or fetch the "
                            f"file yourself into {dest.parent}.")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)  # no-op after a successful os.replace


def _missing_error(name: str, folder: Path, needed: str) -> DataError:
    return DataError(
        f"Data set {name!r} not found: expected {needed} in the folder {folder}, and "
        f"data.download=false forbids fetching them. Fix: copy the files there, point "
        f"data.root=... at a folder that holds {name}/ with them, or set data.download=true to "
        f"download them once (checksum verified).")


def _ensure_files(name: str, folder: Path, md5s: Mapping[str, str], url: str,
                  download: bool) -> None:
    """Make sure every file in ``md5s`` exists in ``folder``, downloading the missing ones."""
    missing = [f for f in md5s if not _present(folder / f)]
    for fname in md5s:
        if fname not in missing and (folder / fname).is_file():
            _check_published(folder / fname, md5s[fname])
    if not missing:
        return
    if not download:
        raise _missing_error(name, folder, ", ".join(md5s))
    for fname in missing:
        _download(url.rstrip("/") + "/" + fname, folder / fname, md5s[fname])


def _check_published(path: Path, md5: str) -> None:
    """Warn when a local file is not the published one (its MD5 differs).

    A warning, not an error: a re-compressed copy of the same images has another MD5 too. What a
    run was trained on is recorded as the loaded arrays' fingerprint, which eval and resume= check.
    """
    got = _md5(path)
    if got != md5:
        log.warning("%s is not the published file (MD5 %s, expected %s): if it holds other data, results will not "
                    "compare with the data set's. Delete it and run with data.download=true for the original.",
                    path, got, md5)


def _present(path: Path) -> bool:
    """A .gz file counts as present if it, or its already-unzipped twin, exists."""
    return path.is_file() or (path.suffix == ".gz" and path.with_suffix("").is_file())


def _corrupt(path: Path, why: str) -> DataError:
    return DataError(f"Corrupt data file {path}: {why}. Delete it and run again with "
                     f"data.download=true, or replace it with a good copy.")

