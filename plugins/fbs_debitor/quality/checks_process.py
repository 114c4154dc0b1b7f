"""The run's data-quality checks in a process of their own, started before the sending.

``python -m fbs_debitor transfer`` does in one process what DAG debitor_transfer does in tasks:
the sending, then the checks over what the sending looked at (``checks.run_checks(staged=True)``).
The checks need Great Expectations, whose import alone takes seconds (about 4.4 s on a 2-core
machine, more than the sending of an hour's change at 1M liabilities), and only after the sending.
So the command starts this process first: it imports GX and loads the GX project while the
sending goes on (on the machine's other core), then waits. When the sending is done the parent
says which run to check; this process checks it exactly as the parent would have (the same
``run_checks``, the same databases, settings and Data Docs place) and answers with the counts, or
with the error, which then becomes the run's failure as it would in one process.

Nothing is checked unless the parent says so: a parent that ends first kills it, and one that is
killed closes the pipe, on which this process exits; neither touches a database. It reads the ledger and writes findings
only while the parent waits for its answer, so the two never write at the same time.

The conversation, one JSON line each way, on the child's standard input and output (its standard
error is the parent's, for its log lines):

* parent -> child at start: ``{"log_level": int, "log_format": str, "data_docs_dir": str | null}``
* parent -> child after the sending: ``{"run_id": str, "fbs": url, "ledger": url}`` (nothing, or
  end of input: no checks)
* child -> parent: ``{"ok": true, "result": DQResult.as_dict()}`` or ``{"ok": false, "error": text}``
  (CPR numbers masked)
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from fbs_debitor.core import storage
from fbs_debitor.core.identity import mask_cprs_in
from fbs_debitor.core.settings import DatabaseUrls
from fbs_debitor.core.stores import Stores, open_stores
from fbs_debitor.quality import checks

log = logging.getLogger(__name__)


class ChecksFailed(RuntimeError):
    """The checks process answered with an error, or ended without an answer."""


class ChecksProcess:
    """The checks of one run, in a child process started now (``with ChecksProcess(docs) as p:
    ...; p.run(stores, run_id)``). Leaving the block without ``run`` ends the child unused."""

    def __init__(self, data_docs_dir: Path | None):
        package_root = str(Path(checks.__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        self._child = subprocess.Popen([sys.executable, "-m", "fbs_debitor.quality.checks_process"],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
        root = logging.getLogger()
        fmt = next((h.formatter._fmt for h in root.handlers if h.formatter is not None and h.formatter._fmt),
                   logging.BASIC_FORMAT)
        self._say({"log_level": root.getEffectiveLevel(), "log_format": fmt,
                   "data_docs_dir": str(data_docs_dir) if data_docs_dir is not None else None})

    def _say(self, message: dict) -> None:
        try:
            self._child.stdin.write(json.dumps(message) + "\n")
            self._child.stdin.flush()
        except (BrokenPipeError, OSError):
            pass   # the child is gone: run() says so

    def run(self, stores: Stores, run_id: str) -> dict:
        """Check run ``run_id`` (its staged pages) in the child; its DQResult as a dict. Raises
        ChecksFailed with the child's error (or its exit code when it gave no answer)."""
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
        """End the child. Not asked to check (or no longer waited for: the parent was interrupted),
        it is killed: it writes nothing before it is asked, and a check cut short leaves the run's
        staged pages in place, so the run's findings are not resolved as if fixed."""
        _close(self._child.stdin)
        if self._child.poll() is None:
            self._child.kill()
            self._child.wait()
        self._child.stdout.close()

    def __enter__(self) -> ChecksProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _close(pipe) -> None:
    try:
        pipe.close()
    except OSError:
        pass   # the child is gone (a broken pipe on the last flush)


def _url(engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _answer(out, message: dict) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


def main() -> int:
    """The child: prepare GX, wait for the run to check, check it, answer."""
    answers = sys.stdout
    sys.stdout = sys.stderr          # anything a library prints goes to the log, not into the answer
    start = sys.stdin.readline()
    if not start:
        return 0
    first = json.loads(start)
    logging.basicConfig(level=first["log_level"], format=first["log_format"])
    docs = storage.at(first["data_docs_dir"]) if first["data_docs_dir"] else None
    try:
        checks.prepare(docs)
    except Exception:   # noqa: BLE001 - reported when asked, as the check itself would raise it
        log.debug("preparing the GX context failed; the checks will say why", exc_info=True)
    order = sys.stdin.readline()
    if not order.strip():
        return 0                     # no checks asked for (the parent ended first)
    order = json.loads(order)
    stores = open_stores(DatabaseUrls(fbs=order["fbs"], ledger=order["ledger"]))
    try:
        result = checks.run_checks(stores, order["run_id"], data_docs_dir=docs, staged=True)
        _answer(answers, {"ok": True, "result": result.as_dict()})
    except Exception as exc:   # noqa: BLE001 - the parent records it as the run's failure
        log.exception("the data-quality checks failed")
        _answer(answers, {"ok": False, "error": mask_cprs_in(f"{type(exc).__name__}: {exc}")})
    finally:
        stores.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
