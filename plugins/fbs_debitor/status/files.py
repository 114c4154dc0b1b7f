"""The staff reports' folder (``var/reports``) as the status page serves it: a file is served
only when it is a regular file under that folder, reached without ``..``, hidden names or any
symbolic link on the way, and is an HTML page, a CSV or a PNG. Anything else is "not found"
(the same answer whether the file exists or not)."""

from __future__ import annotations

from pathlib import Path

MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".csv": "text/csv; charset=utf-8", ".png": "image/png"}


class NotServed(LookupError):
    """The path is not one the page serves (outside the folder, a link, another kind of file)."""


def report_file(root: Path, relpath: str) -> tuple[Path, str]:
    """The file ``relpath`` (``/``-separated) under ``root`` and its media type, or ``NotServed``."""
    parts = relpath.split("/")
    if not relpath or len(relpath) > 1000 or any(
            not p or p in (".", "..") or p.startswith(".") or "\\" in p or "\x00" in p for p in parts):
        raise NotServed(relpath)
    media = MEDIA_TYPES.get(Path(parts[-1]).suffix.lower())
    if media is None:
        raise NotServed(relpath)
    try:
        if root.is_symlink():
            raise NotServed(relpath)
        base = root.resolve(strict=True)
        here = root
        for part in parts:                     # no link anywhere on the way, in or out
            here = here / part
            if here.is_symlink():
                raise NotServed(relpath)
        real = here.resolve(strict=True)
        real.relative_to(base)
    except (OSError, ValueError):
        raise NotServed(relpath) from None
    if not real.is_file():
        raise NotServed(relpath)
    return real, MEDIA_TYPES[real.suffix.lower()]
