"""Issue 18 as a person sees it: each municipality's sending tasks carry its label in the Airflow UI.

Two municipalities at two debtor systems (agency 715100 in 29189404 at KMD OPUS, agency 726300 in
29189633 at EG), one eligible fee each. ``airflow dags test debitor_transfer`` sends both to the
debtor emulator; then a real ``airflow api-server`` on the same metadata database serves the UI,
and headless Chromium (logged in with the UI's ``_token`` cookie) opens the page of the mapped task
instances of ``send_kmd_opus.build_and_send`` and of ``send_eg.build_and_send`` for that run: each
names its municipality (``map_index_template="{{ unit_label }}"``, stored by Airflow as
``rendered_map_index``), as the REST API does too. Screenshots: ``var/test-artifacts/grid-*.png``.
SQLite only: what is checked is Airflow's UI, not the stores (test_dags.py runs both).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from urllib.parse import quote

import debtor
import fbs_rows as fr
import pytest
from airflow_env import airflow_env, api_server, api_token, dags_test
from browser import artifact, logged_in_page
from lxml import html as lxml_html

from fbs_debitor.core.settings import DatabaseUrls
from fbs_debitor.core.stores import init_stores, open_stores
from fbs_debitor.sandbox import emulator

EG_UNIT = "6a2e9b63-1d49-4b54-8a6f-3c8b2d1e0f33"
LABELS = {"send_kmd_opus.build_and_send": "29189404 Testby (KMD_OPUS)",
          "send_eg.build_and_send": "29189633 Testby (EG)"}


def _get(url: str, token: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=60) as r:   # noqa: S310 - loopback only
        return json.loads(r.read())


@pytest.mark.airflow
@pytest.mark.browser
def test_issue18_mapped_sending_tasks_show_their_municipality_in_the_airflow_ui(tmp_path):
    from pgcluster import free_port

    urls = DatabaseUrls(fbs=f"sqlite:///{tmp_path / 'fbs.sqlite'}", ledger=f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    stores = open_stores(urls)
    init_stores(stores)
    with stores.fbs.connect() as conn:
        fr.agency(conn)                                                       # 715100: 29189404, KMD OPUS
        fr.agency(conn, agency_id="726300", municipality_cvr="29189633", debtor_vendor="EG", org_unit_uuid=EG_UNIT)
        for a in ("715100", "726300"):
            fr.liability(conn, fr.patron(conn, agency_id=a)["patron_id"], agency_id=a)
        conn.commit()
    stores.dispose()

    env = airflow_env(tmp_path, urls)
    emu_db = f"sqlite:///{tmp_path / 'emulator.sqlite'}"
    with emulator.Emulator("KMD_OPUS", emu_db, vendor_by_org_unit=emulator.vendors_from_fbs(urls.fbs)) as emu:
        env["AIRFLOW_CONN_SERVICEPLATFORMEN"] = debtor.connection_json(emu.url)
        state, output = dags_test(env, "debitor_transfer")
        assert state == "success", output[-4000:]
    assert sorted(c["fordring_id"].split("-")[1] for c in emulator.claims(emu_db)) == ["715100", "726300"]

    port = free_port()
    env.update(AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="False",
               AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="reader:viewer",
               AIRFLOW__API_AUTH__JWT_SECRET="grid-test-secret-" + os.urandom(8).hex(),
               AIRFLOW__API__BASE_URL=f"http://127.0.0.1:{port}")
    with api_server(env, tmp_path, port) as base:
        token = api_token(base, tmp_path / "airflow" / "simple_auth_manager_passwords.json.generated", "reader")
        runs = _get(f"{base}/api/v2/dags/debitor_transfer/dagRuns", token)["dag_runs"]
        assert [r["state"] for r in runs] == ["success"]
        run = quote(runs[0]["dag_run_id"], safe="")

        for task_id, label in LABELS.items():
            # the REST API: one mapped instance, labelled by its municipality
            mapped = _get(f"{base}/api/v2/dags/debitor_transfer/dagRuns/{run}/taskInstances/{task_id}/listMapped",
                          token)["task_instances"]
            assert [(t["map_index"], t["rendered_map_index"], t["state"]) for t in mapped] == [(0, label, "success")]
            # the UI: the page of the task's mapped instances, in the browser
            vendor = label.split("(")[1].rstrip(")")
            shot = artifact(f"grid-mapped-{vendor.lower()}.png")
            shot.unlink(missing_ok=True)
            # (the label, and the table's headers translated: on a busy machine the page first
            # shows the raw keys, such as "mapIndex", until the UI's translations have loaded)
            wait = (f'document.body.innerText.includes({json.dumps(label)}) && '
                    '[...document.querySelectorAll("table th")].some(th => th.textContent.trim() === "Map Index") && '
                    'document.documentElement.outerHTML')
            dom = logged_in_page(f"{base}/dags/debitor_transfer/runs/{run}/tasks/{task_id}/mapped", token, shot,
                                 dom=wait)
            doc = lxml_html.fromstring(dom)
            text = doc.text_content()
            # the table of the task's mapped instances: its "Map Index" column shows the label
            headers = [h.text_content().strip() for h in doc.xpath("//table//th")]
            assert "Map Index" in headers, headers
            cells = doc.xpath("//table//td[normalize-space()=$label]", label=label)
            assert len(cells) == 1, text[-2000:]
            assert cells[0].xpath("count(preceding-sibling::td)") == headers.index("Map Index")
            other = next(v for v in LABELS.values() if v != label)
            assert other not in text                 # the other municipality's label is its own task's
            assert shot.stat().st_size > 10_000
