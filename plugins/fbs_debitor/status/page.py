"""The status page as HTML: one self-contained page (inline CSS, no script, nothing from a CDN)
rendered from ``templates/status.html.j2`` with autoescaping on, so nothing from the data (alarm
messages, agency names, run errors) is ever markup. Links are relative to the page, which the
Airflow api-server serves at ``<prefix>/status``: ``reports/...`` (the staff reports, through the
same app) and ``../dags/<dag>/runs/<run>`` (the Airflow UI's run page), so they keep working when
Airflow is served under a sub-path."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from fbs_debitor.status.overview import Overview

TEMPLATE_DIR = Path(__file__).with_name("templates")
STATE_LABEL = {"ok": "OK", "attention": "Attention", "failed": "Failed", "held": "Held", "none": "No run",
               "success": "OK", "running": "Running", "differences": "Differences", "pending": "Pending"}


@cache
def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATE_DIR), autoescape=select_autoescape(default=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["label"] = lambda s: STATE_LABEL.get(s, s)
    env.filters["url"] = lambda s: quote(s, safe="/")
    env.filters["dkk"] = lambda v: f"{v:,.2f}".replace(",", "\u00a0")
    env.filters["ts"] = lambda v: v.strftime("%Y-%m-%d %H:%M") if v else "–"
    return env


def render_status(overview: Overview, ui_root: str = "../") -> str:
    """The page for ``overview``; ``ui_root`` is the Airflow UI's root relative to the page."""
    return _environment().get_template("status.html.j2").render(o=overview, ui_root=ui_root)


def render_error(title: str, detail: str) -> str:
    """A page saying the overview could not be read, and why (no traceback, no URL)."""
    return _environment().get_template("error.html.j2").render(title=title, detail=detail)
