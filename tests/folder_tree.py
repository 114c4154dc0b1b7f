"""What is in a folder, as raw bytes: for tests that must prove a file was, or was not, touched."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def tree(folder: Path) -> dict[bytes, tuple]:
    """Every entry under ``folder`` (raw names, links not followed): its kind and bytes or target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(folder)):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            rel = os.path.relpath(p, os.fsencode(folder))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    out[rel] = ("file", f.read())
            else:
                out[rel] = (stat.S_IFMT(st.st_mode),)
    return out
