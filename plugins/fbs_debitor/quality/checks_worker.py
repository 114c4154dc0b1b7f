"""The checks process of ``python -m fbs_debitor transfer`` (``quality.checks_process`` says why
and how the run talks to it): it imports Great Expectations at once, loads the GX project for the
run's Data Docs place, waits for the run to say which run to check, checks it with
``checks.run_checks(staged=True)`` and answers with the counts or the error."""

from __future__ import annotations

import json
import logging
import os
import sys

from fbs_debitor.core import storage
from fbs_debitor.core.identity import mask_cprs_in
from fbs_debitor.core.settings import DatabaseUrls
from fbs_debitor.core.stores import open_stores
from fbs_debitor.quality import checks

log = logging.getLogger(__name__)


def _answer(out, message: dict) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


def main() -> int:
    """Prepare GX, wait for the run to check, check it, answer."""
    answers = sys.stdout
    sys.stdout = sys.stderr          # anything a library prints goes to the log, not into the answer
    try:
        import great_expectations  # noqa: F401 - the seconds this process is for, before the run needs them
    except Exception:   # noqa: BLE001 - run_checks imports it again and the run is told why
        pass
    start = sys.stdin.readline()
    if not start:
        return 0                     # the run ended before it needed the checks
    first = json.loads(start)
    logging.basicConfig(level=first["log_level"], format=first["log_format"])
    docs = storage.at(first["data_docs_dir"]) if first["data_docs_dir"] else None
    try:
        checks.prepare(docs)
    except Exception:   # noqa: BLE001 - run_checks meets it again and the run is told why
        log.debug("preparing the GX context failed; the checks will say why", exc_info=True)
    order = sys.stdin.readline()
    if not order.strip():
        return 0                     # no checks asked for
    order = json.loads(order)
    stores = open_stores(DatabaseUrls(fbs=order["fbs"], ledger=order["ledger"]))
    try:
        result = checks.run_checks(stores, order["run_id"], data_docs_dir=docs, staged=True)
        _answer(answers, {"ok": True, "result": result.as_dict()})
    except Exception as exc:   # noqa: BLE001 - the run records it as its failure
        log.exception("the data-quality checks failed")
        _answer(answers, {"ok": False, "error": mask_cprs_in(f"{type(exc).__name__}: {exc}")})
    finally:
        stores.dispose()
    return 0


def _exit_now(code: int) -> None:
    """End the process at once, without the interpreter's teardown: freeing Great Expectations'
    modules takes about 1.5 s (measured on a 2-core machine), which the run would wait for. All
    this process did is committed and answered before ``main`` returns; the log is flushed here."""
    logging.shutdown()
    for stream in (sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass             # the run is gone: nothing to say to it
    os._exit(code)


if __name__ == "__main__":
    _exit_now(main())       # (an exception from main ends the process the normal way, with its traceback)
