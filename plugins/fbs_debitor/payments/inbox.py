"""Where the debtor system's payment files arrive (P1), behind one small interface.

``Inbox`` is all the payments run needs: list the files waiting, read one, move it to the archive
(applied, or recognised as delivered before) or to quarantine (not applied, with the reason next to
it). ``FolderInbox`` is a local (or mounted) folder; an SFTP folder in production implements the
same six methods (paramiko's ``listdir``/``open``/``rename`` map one to one) and is chosen by the
``FBS_DEBITOR_PAYMENT_INBOX`` URL scheme. Nothing is ever deleted: a file leaves the inbox only by
a rename into ``archive/`` or ``quarantine/``. The writer must write under another name (``*.part``
or a dot-file) and rename when done, as SFTP drop folders are usually set up: a file is read as it
is found.

| variable                     | default                    | meaning                                 |
|------------------------------|----------------------------|-----------------------------------------|
| FBS_DEBITOR_PAYMENT_INBOX    | ``<var>/payments/inbox``   | the folder the debtor system writes to  |
| FBS_DEBITOR_PAYMENT_ARCHIVE  | ``<inbox>/../archive``     | applied files                           |
| FBS_DEBITOR_PAYMENT_QUARANTINE | ``<inbox>/../quarantine``| refused files, each with ``.reason.txt``|
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Protocol

from fbs_debitor.core.settings import var_dir
from fbs_debitor.payments.files import PARTIAL_SUFFIX


class Inbox(Protocol):
    def waiting(self) -> list[str]:
        """Names of the files waiting, oldest name first (files being written are not listed)."""

    def size(self, name: str) -> int:
        """Bytes, before reading: a file too large is quarantined unread."""

    def read(self, name: str) -> bytes: ...

    def archive(self, name: str) -> None: ...

    def quarantine(self, name: str, reason: str) -> None: ...

    def describe(self) -> str: ...


class FolderInbox:
    def __init__(self, inbox: Path, archive: Path | None = None, quarantine: Path | None = None):
        self.inbox = Path(inbox)
        self.archive_dir = Path(archive) if archive else self.inbox.parent / "archive"
        self.quarantine_dir = Path(quarantine) if quarantine else self.inbox.parent / "quarantine"

    def waiting(self) -> list[str]:
        if not self.inbox.is_dir():
            return []
        return sorted(p.name for p in self.inbox.iterdir()
                      if p.is_file() and not p.name.startswith(".") and not p.name.endswith(PARTIAL_SUFFIX))

    def size(self, name: str) -> int:
        return (self.inbox / name).stat().st_size

    def read(self, name: str) -> bytes:
        return (self.inbox / name).read_bytes()

    def _move(self, name: str, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / name
        if target.exists():      # the same name delivered twice: keep both
            target = folder / f"{name}.{dt.datetime.now():%Y%m%dT%H%M%S%f}"
        os.replace(self.inbox / name, target)
        return target

    def archive(self, name: str) -> None:
        self._move(name, self.archive_dir)

    def quarantine(self, name: str, reason: str) -> None:
        target = self._move(name, self.quarantine_dir)
        target.with_name(target.name + ".reason.txt").write_text(reason + "\n", encoding="utf-8")

    def describe(self) -> str:
        return str(self.inbox)


def default_inbox_dir() -> Path:
    return Path(os.environ.get("FBS_DEBITOR_PAYMENT_INBOX") or var_dir() / "payments" / "inbox")


def open_inbox(location: str | Path | None = None) -> Inbox:
    """The inbox at ``location`` (default FBS_DEBITOR_PAYMENT_INBOX, else var/payments/inbox)."""
    where = str(location or default_inbox_dir())
    if where.startswith("sftp://"):
        raise NotImplementedError("an SFTP inbox implements inbox.Inbox; this build ships the folder inbox only "
                                  "(mount the SFTP folder, or add the class)")
    path = Path(where.removeprefix("file://"))
    return FolderInbox(path, Path(os.environ["FBS_DEBITOR_PAYMENT_ARCHIVE"]) if os.environ.get(
        "FBS_DEBITOR_PAYMENT_ARCHIVE") else None, Path(os.environ["FBS_DEBITOR_PAYMENT_QUARANTINE"]) if os.environ.get(
        "FBS_DEBITOR_PAYMENT_QUARANTINE") else None)
