"""The status page inside the Airflow UI: a FastAPI app the api-server mounts (the plugin
``plugins/fbs_debitor_status.py`` builds it with ``create_app`` on the first request) at
``/fbs-debitor``:

    /status         the page (HTML, ``fbs_debitor.status.page``)
    /status.json    the same overview as JSON (``fbs_debitor.status.overview``)
    /reports/<...>  the staff reports and reconciliation CSVs under ``reports`` in the shared store
                    (``FBS_DEBITOR_STORAGE_URL``, default ``var/``; ``status.files`` on this
                    machine's disk, ``store_file`` in an object store)

A plugin's app is not behind Airflow's login by itself: every route of this one depends on
Airflow's own ``requires_authenticated()`` (app-wide), which reads the UI's session (the ``_token``
cookie) or an ``Authorization: Bearer`` token and refuses a request with neither (401) or with a
token that is not valid (403). FastAPI's own /docs and /openapi.json, which such a dependency
would not cover, are switched off.

The two databases are opened once per api-server process, on the first request
(``connections.database_urls_for_task``: the Connections ``fbs_db`` / ``debitor_ledger``, else the
settings), and kept; the overview is a handful of set-based queries. A database that is missing or
cannot be read gives a short error page (or JSON) with status 503, never a traceback.
"""

from __future__ import annotations

import logging
import threading
from pathlib import PurePosixPath

from airflow.api_fastapi.core_api.security import requires_authenticated
from fastapi import Depends, FastAPI
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy.exc import SQLAlchemyError

from fbs_debitor.airflow import connections
from fbs_debitor.core import settings, storage
from fbs_debitor.core.identity import mask_cprs_in
from fbs_debitor.core.stores import Stores, open_stores
from fbs_debitor.quality import report as dq_report
from fbs_debitor.status import files, page
from fbs_debitor.status.overview import Overview, build_overview

log = logging.getLogger(__name__)

NAME = "fbs-debitor status"
# The page is framed by the Airflow UI (same origin) and needs nothing but its own inline CSS.
PAGE_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'self'"


class Unavailable(Exception):
    """The overview cannot be read; the message says why, in words fit for the page."""


class _Stores:
    """The stores, opened on first use and kept for the process (not per request)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._stores: Stores | None = None

    def get(self) -> Stores:
        with self._lock:
            if self._stores is None:
                try:
                    urls = connections.database_urls_for_task()
                except settings.SettingError as exc:
                    raise Unavailable(f"the databases are not configured: {exc}") from None
                self._stores = open_stores(urls)
            return self._stores


_STORES = _Stores()


def _overview() -> Overview:
    try:
        return build_overview(_STORES.get(), reports_root=dq_report.reports_root())
    except Unavailable:
        raise
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or type(exc).__name__).splitlines()[0][:300]
        log.warning("status page: the FBS extract or the ledger could not be read: %s: %s",
                    type(exc).__name__, mask_cprs_in(reason))
        raise Unavailable(f"the FBS extract or the ledger could not be read ({type(exc).__name__}: "
                          f"{mask_cprs_in(reason)}); is the ledger migrated (python -m fbs_debitor init)?") from None


def store_file(root, relpath: str) -> tuple[bytes, str]:
    """A report in an object store: the same names as ``files.report_file`` serves (no ``..``,
    hidden names or empty parts; HTML, CSV or PNG), read whole; else ``files.NotServed`` (the same
    answer whether the object exists or not)."""
    parts = relpath.split("/")
    if not relpath or len(relpath) > 1000 or any(
            not p or p in (".", "..") or p.startswith(".") or "\\" in p or "\x00" in p for p in parts):
        raise files.NotServed(relpath)
    media = files.MEDIA_TYPES.get(PurePosixPath(parts[-1]).suffix.lower())
    if media is None:
        raise files.NotServed(relpath)
    here = root
    for part in parts:
        here = here / part
    try:
        if not here.is_file():
            raise files.NotServed(relpath)
        return here.read_bytes(), media
    except (OSError, ValueError):
        raise files.NotServed(relpath) from None


def create_app() -> FastAPI:
    app = FastAPI(title=NAME, dependencies=[Depends(requires_authenticated())],
                  docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/", include_in_schema=False)
    def index() -> RedirectResponse:
        return RedirectResponse("status")

    @app.get("/status", response_class=HTMLResponse)
    def status_page() -> HTMLResponse:
        try:
            body, code = page.render_status(_overview()), 200
        except Unavailable as exc:
            body, code = page.render_error("the overview cannot be shown", str(exc)), 503
        return HTMLResponse(body, status_code=code,
                            headers={"Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-store"})

    @app.get("/status.json")
    def status_json() -> JSONResponse:
        try:
            return JSONResponse(_overview().as_dict(), headers={"Cache-Control": "no-store"})
        except Unavailable as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)

    @app.get("/reports/{relpath:path}")
    def report(relpath: str):
        headers = {"Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-store",
                   "X-Content-Type-Options": "nosniff"}
        root = dq_report.reports_root()
        try:
            if storage.is_local(root):
                path, media = files.report_file(root, relpath)
            else:
                body, media = store_file(root, relpath)
                return Response(body, media_type=media, headers=headers)
        except files.NotServed:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        return FileResponse(path, media_type=media, headers=headers)

    return app
