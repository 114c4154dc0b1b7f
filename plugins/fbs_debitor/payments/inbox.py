"""Where the debtor system's payment files arrive (P1), behind one small interface.

``Inbox`` is all the payments run needs: check that its folders are the project's own, survey
what is in the inbox, read one file, move it to the archive (applied, or recognised as delivered
before) or to quarantine (not applied, with the reason next to it). ``FolderInbox`` is a local (or
mounted) folder; an SFTP folder in production implements the same methods (paramiko's
``listdir_attr`` gives lstat attributes, ``open``/``stat``/``rename`` map one to one) and is chosen
by the ``FBS_DEBITOR_PAYMENT_INBOX`` URL scheme. Nothing is ever deleted: a file leaves the inbox
only by a rename into ``archive/`` or ``quarantine/``.

**What is taken.** Only a *regular file* (checked with ``lstat``: a symbolic link is never
followed, a FIFO, folder, device or socket never opened) whose name is a *delivery name*:
printable ASCII letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit, ending
in ``.xml`` (any case), at most 255 bytes (NAME_MAX) — what the debtor side writes
(``DA-KMD_OPUS-20261120T0200.xml``, see ``sandbox.emulator_payments``). The writer writes under
another name (``*.part`` or a dot-file, as ``files.write_atomically`` does) and renames when done:
a file is read as it is found. Everything else in the inbox is **never moved and never opened**; it
is surveyed as an ``Entry`` with its kind (``partial``, ``bad_name``, ``symlink``, ``fifo``,
``folder``, ``device``, ``socket``, ``other``) and reported by the run (``apply.report_ignored``).

**Names shown.** A name is only ever shown through ``shown()``: printable ASCII as it is, every
other byte (newline, control character, non-ASCII, bytes that are not UTF-8) as ``\\xNN``, a
backslash doubled, a CPR number masked. So a name cannot forge a log line, and logs, reasons, staff
tasks and the ledger all show the same text.

**The folders are the project's own.** The payments folder (the inbox's parent, where
``archive/`` and ``quarantine/`` are made by default) carries the marker file
``.fbs-debitor-payments``, written by fbs-debitor when it lays the folder out. The configured inbox
(``FBS_DEBITOR_PAYMENT_INBOX``, default ``<var>/payments/inbox``) is the project's by setting: its
folder is marked (also one laid out before the marker existed) and its archive and quarantine made.
Any other folder given as the inbox (``payments --inbox DIR``) is taken only when its parent
already carries the marker; otherwise ``check()`` refuses, naming the folder, before anything is
read or moved. (An archive or quarantine set by FBS_DEBITOR_PAYMENT_ARCHIVE / _QUARANTINE is the
project's by setting.) Archive and quarantine must be two folders, outside the inbox, on the
inbox's filesystem (files move by rename).

**Same name twice.** A file whose name is already taken in ``archive/`` or ``quarantine/`` goes to
a subfolder ``again-<time>[-n]/`` under the same name: nothing is overwritten, whatever the name's
length. A quarantined file's reason goes next to it in ``<name>.reason.txt``, or, where that name
would pass 255 bytes, ``<start of name>~<hash>.reason.txt``; its first line is the reason, the
second names the file (shown). The reason is in the ledger too (``payment_file.reason``).

**Shared by every worker** (issue 18): the default inbox is ``payments/inbox`` under
FBS_DEBITOR_STORAGE_URL (``core.storage``). On a local root (``file://``, the default
``<var>``; or a network share every worker mounts) it is the ``FolderInbox`` above, exactly as
before. On any other store (``s3://``, ...; ``memory://`` in tests) it is an ``ObjectInbox``
through Airflow's ``ObjectStoragePath``: the same survey, read, archive and quarantine, a move
being a copy then a delete, safe to repeat (see the class). The three settings below may each be
an fsspec URL too; a local inbox needs a local archive and quarantine (moves are renames).

| variable                     | default                    | meaning                                 |
|------------------------------|----------------------------|-----------------------------------------|
| FBS_DEBITOR_PAYMENT_INBOX    | ``<storage>/payments/inbox`` | the folder the debtor system writes to  |
| FBS_DEBITOR_PAYMENT_ARCHIVE  | ``<inbox>/../archive``     | applied files                           |
| FBS_DEBITOR_PAYMENT_QUARANTINE | ``<inbox>/../quarantine``| refused files, each with ``.reason.txt``|
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import logging
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote

from fbs_debitor.core import settings, storage
from fbs_debitor.core.identity import mask_cprs_in
from fbs_debitor.payments.files import PARTIAL_SUFFIX

log = logging.getLogger(__name__)

NAME_MAX = 255
DELIVERY_NAME = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._-]*\.[xX][mM][lL]")
MARKER = ".fbs-debitor-payments"
REASON_SUFFIX = ".reason.txt"
PARTIAL, BAD_NAME, SYMLINK, FIFO, FOLDER, DEVICE, SOCKET, OTHER = (
    "partial", "bad_name", "symlink", "fifo", "folder", "device", "socket", "other")
KIND_TEXT = {  # kind -> (Danish, English)
    PARTIAL: ("en fil under skrivning (.part eller punktum-fil)", "a file being written (.part or dot-file)"),
    BAD_NAME: ("en fil hvis navn ikke er et betalingsfilnavn", "a file whose name is not a payment file name"),
    SYMLINK: ("en symbolsk henvisning", "a symbolic link"),
    FIFO: ("en FIFO (navngivet rør)", "a FIFO (named pipe)"),
    FOLDER: ("en mappe", "a folder"),
    DEVICE: ("en enhedsfil", "a device file"),
    SOCKET: ("en socket", "a socket"),
    OTHER: ("et ukendt element", "an entry of unknown type"),
}


def shown(name: bytes | str) -> str:
    """``name`` as it may be shown anywhere: printable ASCII as it is, a backslash doubled, every
    other byte as ``\\xNN``; CPR numbers masked. One line, whatever the name holds."""
    raw = os.fsencode(name) if isinstance(name, str) else name
    out = "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x5C else ("\\\\" if b == 0x5C else f"\\x{b:02x}")
                  for b in raw)
    return mask_cprs_in(out)


def is_delivery_name(name: bytes | str) -> bool:
    """A name a payment delivery may have (see the module doc)."""
    raw = os.fsencode(name) if isinstance(name, str) else name
    return len(raw) <= NAME_MAX and DELIVERY_NAME.fullmatch(raw) is not None


def reason_file_name(name: str) -> str:
    """The reason file's name for a quarantined ``name``, never more than NAME_MAX bytes."""
    if len(os.fsencode(name)) + len(REASON_SUFFIX) <= NAME_MAX:
        return name + REASON_SUFFIX
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
    keep = NAME_MAX - len(REASON_SUFFIX) - len(digest) - 1
    return os.fsdecode(os.fsencode(name)[:keep]) + "~" + digest + REASON_SUFFIX


@dataclass(frozen=True)
class Entry:
    """Something in the inbox that is not taken: never moved, never opened."""
    key: str       # SHA-256 of the kind and the raw name bytes: the same entry run after run
    name: str      # shown()
    kind: str


@dataclass
class Survey:
    waiting: list[str] = field(default_factory=list)      # delivery names of regular files, sorted
    ignored: list[Entry] = field(default_factory=list)


class InboxLayoutError(RuntimeError):
    """The inbox's folders are not the project's own layout: nothing was read or moved."""


class NotTaken(OSError):
    """The entry is no longer a regular file (changed since the survey): left alone."""


class TooLarge(ValueError):
    def __init__(self, size: int):
        super().__init__(f"{size} bytes")
        self.size = size


class Inbox(Protocol):
    def check(self) -> None:
        """Raise InboxLayoutError unless archive and quarantine are the project's own."""

    def survey(self) -> Survey:
        """What is in the inbox: files to take (oldest name first), and everything else."""

    def waiting(self) -> list[str]: ...

    def read(self, name: str, limit: int) -> bytes:
        """The bytes of a waiting file, without following a link or blocking on a FIFO;
        TooLarge (not read) above ``limit``; NotTaken if it is no longer a regular file."""

    def identity(self, name: str) -> str:
        """Something that tells this file from another of the same name (for an unreadable one)."""

    def archive(self, name: str) -> str: ...

    def quarantine(self, name: str, reason: str) -> str: ...

    def describe(self) -> str: ...


def _kind(mode: int, raw: bytes) -> str | None:
    """None for a file to take, else the kind of entry it is."""
    if stat.S_ISLNK(mode):
        return SYMLINK
    if stat.S_ISDIR(mode):
        return FOLDER
    if stat.S_ISFIFO(mode):
        return FIFO
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return DEVICE
    if stat.S_ISSOCK(mode):
        return SOCKET
    if not stat.S_ISREG(mode):
        return OTHER
    if is_delivery_name(raw):
        return None
    return PARTIAL if raw.startswith(b".") or raw.endswith(PARTIAL_SUFFIX.encode()) else BAD_NAME


class FolderInbox:
    def __init__(self, inbox: Path, archive: Path | None = None, quarantine: Path | None = None, *,
                 own: bool = False):
        """``own``: this is the configured inbox, whose folder fbs-debitor lays out (marks) and whose
        archive and quarantine it makes; otherwise the inbox's folder must carry the marker
        already. An archive or quarantine given (a setting) is the project's by setting."""
        self.inbox = Path(inbox)
        self.archive_dir = Path(archive) if archive else self.inbox.parent / "archive"
        self.quarantine_dir = Path(quarantine) if quarantine else self.inbox.parent / "quarantine"
        self.archive_given, self.quarantine_given = archive is not None, quarantine is not None
        self.own = own

    # --- the layout ---------------------------------------------------------------------------

    def check(self) -> None:
        if not self.inbox.is_dir():
            if self.own:
                log.warning("the payment inbox %s does not exist (yet): nothing to take", shown(str(self.inbox)))
                return
            raise InboxLayoutError(f"the payment inbox {shown(str(self.inbox))} is not a folder; nothing was read "
                                   "or moved")
        inbox = self.inbox.resolve()
        if self.archive_dir.resolve() == self.quarantine_dir.resolve():
            raise InboxLayoutError(f"archive and quarantine are the same folder ({shown(str(self.archive_dir))}); "
                                   "they must be two folders; nothing was read or moved")
        layout = self.inbox.parent
        for role, folder, given in (("archive", self.archive_dir, self.archive_given),
                                    ("quarantine", self.quarantine_dir, self.quarantine_given)):
            where = folder.resolve()
            if where == inbox or inbox in where.parents:
                raise InboxLayoutError(f"the payment {role} {shown(str(folder))} is the inbox or inside it; it must "
                                       "be a folder of its own; nothing was read or moved")
            if not given and not (layout / MARKER).is_file():
                if not self.own:
                    raise InboxLayoutError(
                        f"{shown(str(layout))} is not an fbs-debitor payments folder (no {MARKER} in it), so its "
                        f"{role}/ ({shown(str(folder))}) is not fbs-debitor's to move files into: a payment inbox "
                        f"given by hand ({shown(str(self.inbox))}) is taken only inside a payments folder that "
                        "fbs-debitor laid out (a run on the configured inbox, FBS_DEBITOR_PAYMENT_INBOX, does it); "
                        "nothing was read or moved")
                (layout / MARKER).write_text("fbs-debitor payments folder: the inbox/, archive/ and quarantine/ here "
                                             "are fbs-debitor's (files are moved from the inbox into the other two). "
                                             "Keep this file.\n", encoding="utf-8")
                log.info("payments folder %s laid out for fbs-debitor (%s)", shown(str(layout)), MARKER)
            if not folder.is_dir():
                folder.mkdir(parents=True, exist_ok=True)
                log.info("payment %s %s made", role, shown(str(folder)))
            if os.stat(folder).st_dev != os.stat(self.inbox).st_dev:
                raise InboxLayoutError(f"the payment {role} {shown(str(folder))} is on another filesystem than the "
                                       f"inbox {shown(str(self.inbox))}; files are moved by rename, so both must be "
                                       "on one; nothing was read or moved")

    # --- what is there ------------------------------------------------------------------------

    def survey(self) -> Survey:
        found = Survey()
        try:
            entries = os.scandir(os.fsencode(self.inbox))
        except FileNotFoundError:
            return found
        with entries:
            for e in entries:
                try:
                    mode = e.stat(follow_symlinks=False).st_mode
                except FileNotFoundError:       # gone since it was listed
                    continue
                kind = _kind(mode, e.name)
                if kind is None:
                    found.waiting.append(e.name.decode("ascii"))
                else:
                    found.ignored.append(Entry(hashlib.sha256(kind.encode() + b"\0" + e.name).hexdigest(),
                                               shown(e.name), kind))
        found.waiting.sort()
        found.ignored.sort(key=lambda x: (x.name, x.kind))
        return found

    def waiting(self) -> list[str]:
        return self.survey().waiting

    def _open(self, name: str) -> int:
        if not is_delivery_name(name):
            raise NotTaken(f"{shown(name)} is not a delivery name")
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.inbox / name, flags)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EMLINK, errno.ENOTDIR):     # now a link (O_NOFOLLOW)
                raise NotTaken(f"{shown(name)} is no longer a regular file") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise NotTaken(f"{shown(name)} is no longer a regular file")
        return fd

    def read(self, name: str, limit: int) -> bytes:
        fd = self._open(name)
        try:
            size = os.fstat(fd).st_size
            if size > limit:
                raise TooLarge(size)
            chunks, total = [], 0
            while total <= limit:
                chunk = os.read(fd, min(1 << 20, limit + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
            if total > limit:               # grew while being read
                raise TooLarge(total)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def identity(self, name: str) -> str:
        st = os.lstat(self.inbox / name)
        return f"{name} {st.st_dev}:{st.st_ino} {st.st_size} {st.st_mtime_ns}"

    # --- moving out -----------------------------------------------------------------------------

    def _free_place(self, folder: Path, *names: str) -> Path:
        """``folder``, or a new ``again-<time>[-n]`` subfolder of it, where none of ``names`` is taken."""
        if not any(os.path.lexists(folder / n) for n in names):
            return folder
        stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S%f")
        n = 1
        while True:
            sub = folder / (f"again-{stamp}" + (f"-{n}" if n > 1 else ""))
            try:
                sub.mkdir()
                return sub
            except FileExistsError:
                n += 1

    def _move(self, name: str, folder: Path, *also: str) -> Path:
        if not is_delivery_name(name):
            raise NotTaken(f"{shown(name)} is not a delivery name")
        place = self._free_place(folder, name, *also)
        os.replace(self.inbox / name, place / name)
        return place / name

    def archive(self, name: str) -> str:
        return str(self._move(name, self.archive_dir))

    def quarantine(self, name: str, reason: str) -> str:
        target = self._move(name, self.quarantine_dir, reason_file_name(name))
        try:
            target.with_name(reason_file_name(name)).write_text(f"{reason}\nfile: {shown(name)}\n", encoding="utf-8")
        except OSError as exc:     # the file is moved and its reason is in the ledger: say so, go on
            log.error("the reason file of quarantined payment file %s could not be written (%s); the reason is in "
                      "the ledger (payment_file.reason)", shown(name), type(exc).__name__)
        return str(target)

    def describe(self) -> str:
        return shown(str(self.inbox))


# --- on an object store -------------------------------------------------------------------------

class ObjectInbox:
    """The inbox on a store that is not this machine's disk (``s3://``, ``gs://``, ``memory://``
    in tests), through Airflow's ``ObjectStoragePath``: the same methods and rules as
    ``FolderInbox`` where a store has them. A store holds only objects: an object under a
    delivery name is taken; one under another name is ignored and reported as ``FolderInbox``
    does; a "folder" (a common prefix) is ignored. Nothing is followed or opened that is not an
    object. A move is a copy, then the delete of the original (a store has no rename): a crash
    between the two leaves the file in both places, and the next run, which knows the file by its
    SHA-256 (the ledger), moves it again: a copy already in place with the same bytes is kept and
    only the original deleted, so nothing is applied or kept twice."""

    def __init__(self, inbox, archive=None, quarantine=None, *, own: bool = False):
        self.inbox = inbox
        self.archive_dir = archive if archive is not None else inbox.parent / "archive"
        self.quarantine_dir = quarantine if quarantine is not None else inbox.parent / "quarantine"
        self.archive_given, self.quarantine_given = archive is not None, quarantine is not None
        self.own = own

    @staticmethod
    def _key(p) -> str:
        return str(p).rstrip("/") + "/"

    def check(self) -> None:
        inbox = self._key(self.inbox)
        if self._key(self.archive_dir) == self._key(self.quarantine_dir):
            raise InboxLayoutError(f"archive and quarantine are the same folder ({shown(str(self.archive_dir))}); "
                                   "they must be two folders; nothing was read or moved")
        layout = self.inbox.parent
        for role, folder, given in (("archive", self.archive_dir, self.archive_given),
                                    ("quarantine", self.quarantine_dir, self.quarantine_given)):
            where = self._key(folder)
            if where.startswith(inbox) or inbox.startswith(where):
                raise InboxLayoutError(f"the payment {role} {shown(str(folder))} is the inbox or inside it (or holds "
                                       "it); it must be a folder of its own; nothing was read or moved")
            if not given and not (layout / MARKER).exists():
                if not self.own:
                    raise InboxLayoutError(
                        f"{shown(str(layout))} is not an fbs-debitor payments folder (no {MARKER} in it), so its "
                        f"{role}/ is not fbs-debitor's to move files into; nothing was read or moved")
                (layout / MARKER).write_bytes(b"fbs-debitor payments folder: the inbox/, archive/ and quarantine/ "
                                              b"here are fbs-debitor's (files are moved from the inbox into the "
                                              b"other two). Keep this file.\n")
                log.info("payments folder %s laid out for fbs-debitor (%s)", shown(str(layout)), MARKER)

    def survey(self) -> Survey:
        found = Survey()
        try:
            entries = list(self.inbox.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return found
        for e in entries:
            raw = os.fsencode(e.name)
            if e.is_dir():
                kind = FOLDER
            elif is_delivery_name(raw):
                found.waiting.append(e.name)
                continue
            else:
                kind = PARTIAL if raw.startswith(b".") or raw.endswith(PARTIAL_SUFFIX.encode()) else BAD_NAME
            found.ignored.append(Entry(hashlib.sha256(kind.encode() + b"\0" + raw).hexdigest(), shown(raw), kind))
        found.waiting.sort()
        found.ignored.sort(key=lambda x: (x.name, x.kind))
        return found

    def waiting(self) -> list[str]:
        return self.survey().waiting

    def _object(self, name: str):
        if not is_delivery_name(name):
            raise NotTaken(f"{shown(name)} is not a delivery name")
        p = self.inbox / name
        if not p.is_file():
            if p.exists():
                raise NotTaken(f"{shown(name)} is no longer a file")
            raise FileNotFoundError(name)
        return p

    def read(self, name: str, limit: int) -> bytes:
        p = self._object(name)
        try:
            with p.open("rb") as f:           # a store with a registered filesystem: never more than limit + 1
                data = f.read(limit + 1)
        except ValueError:                    # no filesystem registered for the scheme (memory:// in tests)
            data = p.read_bytes()
        if len(data) > limit:
            raise TooLarge(len(data))
        return data

    def identity(self, name: str) -> str:
        return f"{self._key(self.inbox)}{name}"

    def _free_place(self, folder, *names: str):
        if not any((folder / n).exists() for n in names):
            return folder
        stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S%f")
        n = 1
        while True:
            sub = folder / (f"again-{stamp}" + (f"-{n}" if n > 1 else ""))
            if not sub.exists():
                return sub
            n += 1

    def _move(self, name: str, folder, *also: str):
        data = self._object(name).read_bytes()
        target = folder / name
        if not (target.exists() and target.read_bytes() == data):      # not copied there by a run that crashed
            target = self._free_place(folder, name, *also) / name
            target.write_bytes(data)                                     # one PUT: whole or not at all
        (self.inbox / name).unlink()
        return target

    def archive(self, name: str) -> str:
        return str(self._move(name, self.archive_dir))

    def quarantine(self, name: str, reason: str) -> str:
        target = self._move(name, self.quarantine_dir, reason_file_name(name))
        try:
            (target.parent / reason_file_name(name)).write_bytes(f"{reason}\nfile: {shown(name)}\n".encode())
        except OSError as exc:
            log.error("the reason file of quarantined payment file %s could not be written (%s); the reason is in "
                      "the ledger (payment_file.reason)", shown(name), type(exc).__name__)
        return str(target)

    def describe(self) -> str:
        return shown(str(self.inbox))


# --- which inbox -----------------------------------------------------------------------------------

SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


def location(where: str | Path):
    """A payments folder setting or argument as a place: a local ``Path`` (a path, or a file://
    URL) or an ``ObjectStoragePath`` (any other fsspec URL, with FBS_DEBITOR_STORAGE_CONN_ID)."""
    if isinstance(where, Path):
        return where
    if not isinstance(where, str):              # an ObjectStoragePath already
        return storage.local_path(where) or where
    if where.lower().startswith("file://"):
        return Path(where[len("file://"):])
    if SCHEME.match(where):     # Airflow's ObjectStoragePath, as core.storage makes it (only it imports Airflow)
        return storage.of_url(where)
    return Path(where)


def default_inbox_dir():
    """FBS_DEBITOR_PAYMENT_INBOX, else ``payments/inbox`` under FBS_DEBITOR_STORAGE_URL: a ``Path``
    on a local root (as before: ``<var>/payments/inbox`` by default), else an ``ObjectStoragePath``."""
    configured = os.environ.get("FBS_DEBITOR_PAYMENT_INBOX")
    if configured:
        return location(configured)
    root = settings.storage_url()
    if root.lower().startswith("file://"):      # a local root: no need to import Airflow's storage
        return Path(unquote(root[len("file://"):])) / "payments" / "inbox"
    return location(storage.path("payments", "inbox"))


def _same(a, b) -> bool:
    if isinstance(a, Path) and isinstance(b, Path):
        return a.resolve() == b.resolve()
    return str(a).rstrip("/") == str(b).rstrip("/")


def open_inbox(where: str | Path | None = None) -> Inbox:
    """The inbox at ``where`` (default FBS_DEBITOR_PAYMENT_INBOX, else ``payments/inbox`` under the
    storage root). The configured inbox is the project's own; another folder must already have
    the project's layout (``check``). A local folder is a ``FolderInbox``, anything else an
    ``ObjectInbox``."""
    if isinstance(where, str) and where.lower().startswith("sftp://"):
        raise NotImplementedError("an SFTP inbox implements inbox.Inbox; this build ships the folder and object "
                                  "store inboxes only (mount the SFTP folder, or add the class)")
    path = location(where) if where else default_inbox_dir()
    own = where is None or _same(path, default_inbox_dir())
    archive = os.environ.get("FBS_DEBITOR_PAYMENT_ARCHIVE")
    quarantine = os.environ.get("FBS_DEBITOR_PAYMENT_QUARANTINE")
    archive, quarantine = (location(archive) if archive else None), (location(quarantine) if quarantine else None)
    if isinstance(path, Path):
        if not all(p is None or isinstance(p, Path) for p in (archive, quarantine)):
            raise InboxLayoutError("the payment inbox is a local folder but its archive or quarantine is not: files "
                                   "are moved by rename, so all three must be on one filesystem")
        return FolderInbox(path, archive, quarantine, own=own)
    return ObjectInbox(path, archive, quarantine, own=own)
