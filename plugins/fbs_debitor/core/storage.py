"""Shared files: where every worker of a deployment sees the same ones.

Everything the integration keeps as a file (the payments inbox, archive and quarantine and the
inbound receipts, the staff reports and their manifests, the payment and claim reconciliation
reports, backfill dry-run output, the GX Data Docs site) lives under ONE root, an Airflow
``ObjectStoragePath``:

* ``FBS_DEBITOR_STORAGE_URL``: the root, any fsspec URL: ``file:///srv/fbs-debitor`` (a disk or
  a network share every worker mounts), ``s3://bucket/fbs-debitor`` (an S3-compatible store, with
  the Amazon provider installed), ... Default: ``file://<FBS_DEBITOR_VAR>``, the embedded demo's
  ``var/`` folder, so nothing changes for a single machine.
* ``FBS_DEBITOR_STORAGE_CONN_ID``: the Airflow connection with the store's credentials (for
  example ``aws_default``); none for ``file://``.

Two workers on two machines then read and write the same files. A file is written whole or not
at all: on a local root through ``payments.files.write_atomically`` (a temporary file, fsync,
rename), on an object store by one PUT (an object store never shows half an object).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import urlsplit

from fbs_debitor.core import settings

PARTIAL_SUFFIX = ".part"          # a file still being written; never read


def of_url(url: str):
    """Any fsspec URL as an ``ObjectStoragePath`` with the store's connection (``airflow.sdk``;
    imported here, not at module top): the root, or a payments folder configured apart from it."""
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(url, conn_id=settings.storage_conn_id())


def root():
    """The root (FBS_DEBITOR_STORAGE_URL) as an ``ObjectStoragePath``."""
    return of_url(settings.storage_url())


def local_root() -> Path | None:
    """The root as a plain ``Path`` when it is this machine's disk (``file:///...``, no connection),
    read from the URL alone, without importing Airflow (seconds a step that only writes here,
    such as the hourly run's Data Docs, need not pay); None for any other store. The same folder
    ``local_path(root())`` gives."""
    parts = urlsplit(settings.storage_url())
    if parts.scheme != "file" or parts.netloc or not parts.path.startswith("/") or settings.storage_conn_id():
        return None
    return Path(parts.path)


def path(*parts: str):
    """``root() / part / part ...``: the shared place of one kind of file."""
    return under(root(), Path(*parts))


def under(base, rel):
    """``base / rel``'s parts, for a Path or an ``ObjectStoragePath``."""
    out = base
    for part in Path(rel).parts:
        out = out / part
    return out


def at(value):
    """A path as the ledger, a manifest or XCom holds it (text), back as what it was: a plain path on
    this machine, or a place under the shared root (its URL; nothing outside the root is read)."""
    if not isinstance(value, str):
        return value
    if "://" not in value:
        return Path(value)
    base_root = root()
    base = str(base_root).rstrip("/")
    if not value.startswith(base + "/"):
        raise ValueError(f"{value} is not under the shared storage root {base} (FBS_DEBITOR_STORAGE_URL)")
    rel = value[len(base) + 1:]
    local = local_path(base_root)
    return under(local, rel) if local is not None else path(*rel.split("/"))


def is_local(p) -> bool:
    """True when ``p`` is on this machine's file system (``file://``, or a plain Path)."""
    if isinstance(p, Path):
        return True
    return (getattr(p, "protocol", None) or "file") in ("file", "local")


def local_path(p) -> Path | None:
    """The plain ``Path`` of a local ``p``; None on an object store."""
    if isinstance(p, Path):
        return p
    if not is_local(p):
        return None
    return Path(p.path)


def write(p, data: bytes) -> None:
    """``data`` as the file ``p``, whole or not at all (see the module doc)."""
    local = local_path(p)
    if local is not None:
        write_atomically(local.parent, local.name, data)
        return
    p.write_bytes(data)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(folder: Path, name: str, data: bytes) -> Path:
    """Write ``data`` as ``folder/name`` on this machine's disk so that it appears whole or not at
    all, and is on disk before this returns: written as ``<name>.part`` (a link there is not
    followed), flushed, fsync-ed, renamed, and the folder fsync-ed."""
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / (name + PARTIAL_SUFFIX)
    if len(os.fsencode(part.name)) > 255:      # NAME_MAX: a dot-file is "being written" too
        part = folder / f".{hashlib.sha256(os.fsencode(name)).hexdigest()[:16]}{PARTIAL_SUFFIX}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    with os.fdopen(os.open(part, flags, 0o640), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    final = folder / name
    os.replace(part, final)
    _fsync_dir(folder)
    return final
