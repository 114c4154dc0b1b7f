"""The fbs-debitor status page as an Airflow plugin: per municipality, what went today.

Lives directly in the plugins folder because ``plugins/.airflowignore`` keeps Airflow's plugin
manager out of the ``fbs_debitor`` package. The page itself is ``fbs_debitor.airflow.status_page``
(the FastAPI app, every route behind Airflow's login) and ``fbs_debitor.status`` (the figures).
The api-server mounts the app at /fbs-debitor; the UI lists the page in its navigation (Browse)
and shows it framed.

Every Airflow process loads the plugins (the scheduler, the DAG processor, each task for its
macros), but only the api-server serves the page: the app is built on its first request, so the
others never import FastAPI's app, the page or the database code for it.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/fbs-debitor"
NAME = "fbs-debitor status"


class LazyStatusApp:
    """An ASGI app that builds ``fbs_debitor.airflow.status_page.app`` on its first request."""

    def __init__(self):
        self._app = None

    def __repr__(self) -> str:
        return "fbs_debitor.airflow.status_page:app"

    async def __call__(self, scope, receive, send):
        if self._app is None:
            from fbs_debitor.airflow.status_page import create_app

            self._app = create_app()
        await self._app(scope, receive, send)


class FbsDebitorStatusPlugin(AirflowPlugin):
    name = "fbs_debitor_status"
    fastapi_apps = [{"app": LazyStatusApp(), "url_prefix": URL_PREFIX, "name": NAME}]
    external_views = [{"name": "fbs-debitor status", "href": f"{URL_PREFIX}/status", "destination": "nav",
                       "url_route": "fbs-debitor-status", "category": "browse"}]
