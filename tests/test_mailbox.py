"""The demo's mailbox (sandbox): a real SMTP server on loopback keeping each message as an .eml
file, so `./run main` can show what the integration team and the branches were mailed (issue 20)."""

from __future__ import annotations

import os
import smtplib
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

from pgcluster import free_port

from fbs_debitor.sandbox import mailbox

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"


def test_issue20_mailbox_keeps_each_message_whole_with_its_recipients(tmp_path):
    port, folder = free_port(), tmp_path / "mail"
    proc = subprocess.Popen([sys.executable, "-m", "fbs_debitor.sandbox.mailbox", "--port", str(port),
                             "--dir", str(folder)], env={**os.environ, "PYTHONPATH": str(PLUGINS)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            try:
                smtp = smtplib.SMTP("127.0.0.1", port, timeout=5)
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError(proc.stdout.read().decode() if proc.poll() is not None else "mailbox did not start")
        with smtp:
            for n, to in enumerate(["drift@kommune.example", "hovedbibliotek@kommune.example"]):
                msg = EmailMessage()
                msg["From"], msg["To"], msg["Subject"] = "fbs-debitor@kommune.example", to, f"besked {n} æøå"
                msg.set_content("indhold")
                smtp.send_message(msg)
        assert mailbox.subjects(folder) == [("drift@kommune.example", "besked 0 æøå"),
                                            ("hovedbibliotek@kommune.example", "besked 1 æøå")]
        assert not list(folder.glob("*.part"))
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
