"""The debtor side for delivery tests: a Serviceplatformen connection to a running emulator, and
a client with short timeouts and no real waiting between retries."""

from __future__ import annotations

import json

from fbs_debitor.delivery import serviceplatformen

UUIDS = {"service_agreement_uuid": "11111111-1111-4111-8111-111111111111",
         "user_system_uuid": "22222222-2222-4222-8222-222222222222",
         "user_uuid": "33333333-3333-4333-8333-333333333333"}


def connection_extra(**over) -> dict:
    extra = {**UUIDS, "connect_timeout": 2, "operation_timeout": 3, "max_attempts": 4, "backoff_seconds": 0.01}
    extra.update(over)
    return extra


def connection_json(url: str, **over) -> str:
    """The connection as Airflow reads it from AIRFLOW_CONN_SERVICEPLATFORMEN."""
    return json.dumps({"conn_type": "http", "host": url, "extra": connection_extra(**over)})


def client(url: str, **over) -> serviceplatformen.Client:
    config = serviceplatformen.config_from_connection(url, None, None, connection_extra(**over))
    return serviceplatformen.Client(config, sleep=lambda _s: None)
