"""The demo's mail server: a real SMTP server on loopback that keeps every message it receives as
one ``.eml`` file in a folder, so the demo can show what the integration team and the branches
were mailed without sending anything anywhere.

``python -m fbs_debitor.sandbox mailbox --port P --dir var/mail`` runs until stopped. Sandbox only:
the runtime sends through the ``smtp_default`` connection, whatever server that names.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import email
import email.policy
import logging
import os
import signal
import threading
from pathlib import Path

from fbs_debitor.core import settings

log = logging.getLogger(__name__)


class FolderHandler:
    """Each accepted message becomes ``<time>-<n>.eml`` in ``folder``, written whole (temporary
    name, then renamed), with the envelope's recipients in an ``X-Envelope-To`` header."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.count = 0
        self._lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self._lock:
            self.count += 1
            n = self.count
        stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
        target = self.folder / f"{stamp}-{n:04d}.eml"
        tmp = target.with_suffix(".eml.part")
        head = f"X-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n".encode("ascii", "backslashreplace")
        with open(tmp, "wb") as out:
            out.write(head + envelope.original_content)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
        log.info("mail %s to %s", target.name, ", ".join(envelope.rcpt_tos))
        return "250 Message accepted for delivery"


def subjects(folder: Path) -> list[tuple[str, str]]:
    """(recipients, subject) of every message kept in ``folder``, oldest first."""
    found = []
    for path in sorted(folder.glob("*.eml")):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        found.append((str(msg.get("X-Envelope-To", "")), str(msg.get("Subject", ""))))
    return found


def serve(port: int, folder: Path, host: str = "127.0.0.1") -> None:
    from aiosmtpd.controller import Controller  # a test/demo dependency (requirements-dev.txt)

    folder.mkdir(parents=True, exist_ok=True)
    controller = Controller(FolderHandler(folder), hostname=host, port=port, server_hostname="mailbox.sandbox",
                            loop=asyncio.new_event_loop())
    controller.start()
    log.info("demo mailbox on %s:%d keeps messages in %s", host, port, folder)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        controller.stop()


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m fbs_debitor.sandbox mailbox", description=__doc__)
    p.add_argument("--port", type=settings.whole(1, 65_535), required=True, help="loopback port to listen on")
    p.add_argument("--dir", type=Path, required=True, help="folder that keeps one .eml file per message received")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    serve(args.port, args.dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
