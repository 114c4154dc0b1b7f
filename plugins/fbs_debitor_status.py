"""The fbs-debitor status page as an Airflow plugin: per municipality, what went today.

Lives directly in the plugins folder because ``plugins/.airflowignore`` keeps Airflow's plugin
manager out of the ``fbs_debitor`` package; everything is in ``fbs_debitor.airflow.status_page``
(the FastAPI app, behind Airflow's login) and ``fbs_debitor.status`` (the figures). The api-server
mounts the app at /fbs-debitor; the UI shows the page in its navigation, framed.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from fbs_debitor.airflow.status_page import NAME, URL_PREFIX, app


class FbsDebitorStatusPlugin(AirflowPlugin):
    name = "fbs_debitor_status"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": NAME}]
    external_views = [{"name": "fbs-debitor status", "href": f"{URL_PREFIX}/status", "destination": "nav",
                       "url_route": "fbs-debitor-status", "category": "browse"}]
