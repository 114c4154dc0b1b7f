"""The run's data-quality checks in a process of their own, started before the sending.

``python -m fbs_debitor transfer`` does in one process what DAG debitor_transfer does in tasks:
the sending, then the checks over what the sending looked at (``checks.run_checks(staged=True)``).
The checks need Great Expectations, whose import alone takes seconds (about 4.4 s on a 2-core
machine, more than the sending of an hour's change at 1M liabilities), and only after the sending.
So the command starts the checks process (``quality.checks_worker``) first, as the very first
thing it does (``start_early``, from ``fbs_debitor.__main__``): it imports GX and loads the GX
project while the command starts and sends (on the machine's other core), then waits. When the
sending is done the run says which run to check; the worker checks it exactly as the run would
have (the same ``run_checks``, the same databases, settings and Data Docs place) and answers with
the counts, or with the error, which then becomes the run's failure as it would in one process.
Having answered, the worker ends at once, without Python's teardown (freeing GX's modules took
about 1.5 s that the run waited for): everything it did is committed before it answers.

Nothing is checked unless the run asks: a run that ends first kills the worker, and one that is
killed closes the pipe, on which the worker exits; neither touches a database. The worker reads
the ledger and writes findings only while the run waits for its answer, so the two never write at
the same time.

This module is the run's side and imports only the standard library, so that ``__main__`` can
start the worker before it imports anything else. The conversation, one JSON line each way, on the
worker's standard input and output (its standard error is the run's, for its log lines):

* run -> worker at start: ``{"log_level": int, "log_format": str, "data_docs_dir": str | null}``
* run -> worker after the sending: ``{"run_id": str, "fbs": url, "ledger": url}`` (nothing, or
  end of input: no checks)
* worker -> run: ``{"ok": true, "result": DQResult.as_dict()}`` or ``{"ok": false, "error":
  text}`` (CPR numbers masked)
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

WORKER = "fbs_debitor.quality.checks_worker"
_early: subprocess.Popen | None = None


class ChecksFailed(RuntimeError):
    """The checks process answered with an error, or ended without an answer."""


def _spawn() -> subprocess.Popen:
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    return subprocess.Popen([sys.executable, "-m", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env=env, text=True)


def start_early(argv: list[str]) -> bool:
    """``python -m fbs_debitor transfer`` (not ``--dry-run``, not ``--help``): start the checks
    process now, before the command's own imports; the run's ``ChecksProcess`` takes it over. One
    never taken over (the command was refused, or failed before its run) is killed at exit.
    Returns whether it was started."""
    global _early
    words = [a for a in argv if not a.startswith("-")]
    if _early is not None or words[:1] != ["transfer"] or {"--dry-run", "-h", "--help"} & set(argv):
        return False
    _early = _spawn()
    atexit.register(_end_early)
    return True


def _end_early() -> None:
    global _early
    if _early is not None:
        _end(_early)
        _early = None


def _end(child: subprocess.Popen) -> None:
    _close(child.stdin)
    if child.poll() is None:
        child.kill()
        child.wait()
    _close(child.stdout)


class ChecksProcess:
    """The checks of one run in the worker process (``with ChecksProcess(docs) as p: ...;
    p.run(stores, run_id)``): the one ``start_early`` started, else one started now. Leaving the
    block without ``run`` ends it unused."""

    def __init__(self, data_docs_dir):
        global _early
        self._child = _early if _early is not None else _spawn()
        _early = None
        root = logging.getLogger()
        fmt = next((h.formatter._fmt for h in root.handlers if h.formatter is not None and h.formatter._fmt),
                   logging.BASIC_FORMAT)
        self._say({"log_level": root.getEffectiveLevel(), "log_format": fmt,
                   "data_docs_dir": str(data_docs_dir) if data_docs_dir is not None else None})

    @property
    def pid(self) -> int:
        return self._child.pid

    def _say(self, message: dict) -> None:
        try:
            self._child.stdin.write(json.dumps(message) + "\n")
            self._child.stdin.flush()
        except (BrokenPipeError, OSError):
            pass   # the worker is gone: run() says so

    def run(self, stores, run_id: str) -> dict:
        """Check run ``run_id`` (its staged pages) in the worker; its DQResult as a dict. Raises
        ChecksFailed with the worker's error (or its exit code when it gave no answer)."""
        self._say({"run_id": run_id, "fbs": _url(stores.fbs), "ledger": _url(stores.ledger)})
        _close(self._child.stdin)
        answer = self._child.stdout.readline()
        code = self._child.wait()
        if not answer:
            raise ChecksFailed(f"the checks process ended with exit code {code} without an answer")
        reply = json.loads(answer)
        if not reply.get("ok"):
            raise ChecksFailed(reply.get("error") or "the checks process gave no reason")
        return reply["result"]

    def close(self) -> None:
        """End the worker. Not asked to check (or no longer waited for: the run was interrupted),
        it is killed: it writes nothing before it is asked, and a check cut short leaves the run's
        staged pages in place, so the run's findings are not resolved as if fixed."""
        _end(self._child)

    def __enter__(self) -> ChecksProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _close(pipe) -> None:
    try:
        pipe.close()
    except OSError:
        pass   # the worker is gone (a broken pipe on the last flush)


def _url(engine) -> str:
    return engine.url.render_as_string(hide_password=False)
