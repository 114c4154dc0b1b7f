"""Serviceplatformen access per municipality: one agreement, mode and endpoint each.

Every call is made on behalf of one municipality (FBS's ``agency.municipality_cvr``), under that
municipality's own service agreement. The settings come from Airflow Connections (outside Airflow:
the same JSON in ``AIRFLOW_CONN_<ID>``):

* ``serviceplatformen``: the default every municipality starts from (endpoint, certificate, CA,
  timeouts, and the mode most municipalities use);
* ``serviceplatformen_<cvr>``: one municipality's own settings, its ``extra`` fields laid over the
  default's (and its ``host`` over the default's when set): typically its service agreement UUID in
  certificate mode, or ``"auth": "saml"`` with the STS endpoint in token mode.

A municipality needs at least one of the two. Its merged settings are validated as one Config
(``serviceplatformen.Config``, every field with its allowed range) when the run starts
(``Clients.check``); a municipality whose settings are wrong, or whose token the STS refuses or
does not give, is *held*: ``Clients.for_agency`` raises ``AccessHeld`` for each of its agencies
(their claims wait, unsent, for the next run; an operator alarm names the municipality and the
reason) while every other municipality is delivered. Secrets are never in these settings: the
certificate and key are file paths; no field is logged but the mode, the endpoint and the
agreement UUID (not secret).
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.engine import Engine

from fbs_debitor.core.db import sql_file
from fbs_debitor.delivery import serviceplatformen
from fbs_debitor.delivery.serviceplatformen import CONN_ID, AccessHeld, Client, Config, ConfigError

log = logging.getLogger(__name__)

ENV_PREFIX = "AIRFLOW_CONN_"
CVR = re.compile(r"\d{8}")


def conn_id_for(cvr: str) -> str:
    """The connection id of one municipality's own settings."""
    return f"{CONN_ID}_{cvr}"


@dataclass(frozen=True)
class ConnFields:
    """The fields of one Airflow Connection that the access settings read."""

    conn_id: str
    host: str | None = None
    port: int | None = None
    schema: str | None = None
    conn_type: str | None = None
    extra: dict = field(default_factory=dict)
    login: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @classmethod
    def of(cls, conn) -> ConnFields:
        """From an Airflow Connection object."""
        return cls(conn_id=conn.conn_id, host=conn.host, port=conn.port, schema=conn.schema,
                   conn_type=conn.conn_type, extra=conn.extra_dejson, login=conn.login, password=conn.password)

    @classmethod
    def from_json(cls, conn_id: str, raw: str) -> ConnFields:
        """From Airflow's JSON form of a connection (``AIRFLOW_CONN_<ID>``)."""
        data = serviceplatformen.connection_from_json(raw, conn_id)
        return cls(conn_id=conn_id, host=data.get("host"), port=data.get("port"), schema=data.get("schema"),
                   conn_type=data.get("conn_type"), extra=data["extra"], login=data.get("login"),
                   password=data.get("password"))


Lookup = Callable[[str], "ConnFields | None"]


def env_lookup(environ: Mapping[str, str] | None = None) -> Lookup:
    """Connections from ``AIRFLOW_CONN_<ID>`` environment variables (the CLI outside Airflow)."""
    env = os.environ if environ is None else environ

    def lookup(conn_id: str) -> ConnFields | None:
        raw = env.get(f"{ENV_PREFIX}{conn_id.upper()}")
        return ConnFields.from_json(conn_id, raw) if raw else None

    return lookup


def config_for(cvr: str, lookup: Lookup) -> Config:
    """The merged, validated settings of one municipality; ConfigError names the connection."""
    if not CVR.fullmatch(str(cvr or "")):
        raise ConfigError(f"municipality CVR {cvr!r} is not 8 digits (agency.municipality_cvr in FBS)")
    default, own = lookup(CONN_ID), lookup(conn_id_for(cvr))
    if default is None and own is None:
        raise ConfigError(f"municipality {cvr}: no Serviceplatformen access: define the Airflow Connection "
                          f"{CONN_ID!r} (the default) or {conn_id_for(cvr)!r}")
    for conn in (default, own):
        if conn is not None and (conn.login or conn.password):
            raise ConfigError(f"connection {conn.conn_id!r}: login and password are not used (Serviceplatformen "
                              "authenticates the client certificate): remove them from the connection")
    base = default or ConnFields(conn_id=CONN_ID)
    top = own or ConnFields(conn_id=conn_id_for(cvr))
    _check_default_extra(base)
    if not isinstance(top.extra, dict):
        raise ConfigError(f"connection {top.conn_id!r}: extra must be a JSON object")
    if top.extra.get("municipality_cvr", cvr) != cvr:
        raise ConfigError(f"connection {top.conn_id!r}: municipality_cvr must be {cvr} (the connection's own CVR)")
    extra = {**base.extra, **top.extra, "municipality_cvr": cvr}
    if own is not None and own.host:
        host, port, schema, conn_type = own.host, own.port, own.schema, own.conn_type
    else:
        host, port, schema, conn_type = base.host, base.port, base.schema, base.conn_type
    return serviceplatformen.config_from_connection(host, port, schema, extra, conn_type,
                                                    conn_id=top.conn_id if own is not None else CONN_ID)


def _check_default_extra(default: ConnFields) -> None:
    """The default's ``extra`` is an object and names no municipality (that is each one's own)."""
    if not isinstance(default.extra, dict):
        raise ConfigError(f"connection {CONN_ID!r}: extra must be a JSON object")
    if "municipality_cvr" in default.extra:
        raise ConfigError(f"connection {CONN_ID!r}: municipality_cvr belongs in a municipality's own connection "
                          f"({conn_id_for('<cvr>')!r}), not in the default")


def check_default(lookup: Lookup) -> Config | None:
    """The default connection checked as far as it goes alone, before any work (None when there
    is none): every field it sets, in its range, and no credentials. The agreement UUIDs may come
    from each municipality's own connection, so they are not required here."""
    default = lookup(CONN_ID)
    if default is None:
        return None
    _check_default_extra(default)
    extra = dict(default.extra)
    if extra.get("auth") != "saml":
        for name in serviceplatformen.AGREEMENT_FIELDS:       # a stand-in, for checking the rest: never sent
            extra.setdefault(name, str(uuid.UUID(int=0)))
    return serviceplatformen.config_from_connection(default.host, default.port, default.schema, extra,
                                                    default.conn_type, login=default.login,
                                                    password=default.password)


@dataclass(frozen=True)
class Municipality:
    """One municipality's access as checked at the start of a run: its Config, or why it is held."""

    cvr: str
    agencies: tuple[str, ...]
    config: Config | None
    problem: str | None = None

    @property
    def mode(self) -> str:
        if self.config is None:
            return "held"
        return "token" if self.config.auth == "saml" else "certificate"

    def line(self) -> str:
        """One line for a log or the CLI: mode, endpoint and agreement, no secret."""
        if self.config is None:
            return f"municipality {self.cvr} ({', '.join(self.agencies)}): HELD: {self.problem}"
        c = self.config
        via = (f"token from {serviceplatformen.redact_urls(c.sts_endpoint or '')} for {c.entity_id}"
               if c.auth == "saml" else f"service agreement {c.service_agreement_uuid}")
        return (f"municipality {self.cvr} ({', '.join(self.agencies)}): {self.mode} mode, "
                f"{serviceplatformen.redact_urls(c.endpoint)}, {via} (connection {c.conn_id})")


def check(municipality_of: Mapping[str, str], lookup: Lookup) -> dict[str, Municipality]:
    """Every municipality of ``municipality_of`` (agency -> CVR) with its settings or its problem."""
    agencies: dict[str, list[str]] = {}
    for agency, cvr in sorted(municipality_of.items()):
        agencies.setdefault(str(cvr), []).append(agency)
    out: dict[str, Municipality] = {}
    for cvr, names in sorted(agencies.items()):
        try:
            out[cvr] = Municipality(cvr, tuple(names), config_for(cvr, lookup))
        except ConfigError as exc:
            out[cvr] = Municipality(cvr, tuple(names), None, str(exc))
    return out


class Clients:
    """One SF1590 client per municipality, made when first needed and kept for the run; the
    outbox asks ``for_agency(agency)`` before it builds or sends anything of that agency.

    ``for_agency`` raises ``AccessHeld`` for an agency whose municipality has no working access
    (settings wrong, or no token: the STS refused or did not answer); the municipality is then held
    for the rest of the run without asking again."""

    def __init__(self, municipality_of: Mapping[str, str], lookup: Lookup,
                 make_client: Callable[[Config], Client] = Client):
        self.municipality_of = dict(municipality_of)
        self.municipalities = check(self.municipality_of, lookup)
        self._make = make_client
        self._clients: dict[str, Client] = {}
        self._held: dict[str, AccessHeld] = {}
        for m in self.municipalities.values():
            (log.warning if m.config is None else log.info)("%s", m.line())

    def for_agency(self, agency_id: str) -> Client:
        cvr = self.municipality_of.get(agency_id)
        if cvr is None:
            raise AccessHeld(None, "config", f"agency {agency_id} has no municipality CVR in FBS: nothing is sent "
                                             "for it until agency.municipality_cvr is set")
        if cvr in self._held:
            raise self._held[cvr]
        client = self._clients.get(cvr)
        if client is not None:
            return client
        municipality = self.municipalities[cvr]
        try:
            if municipality.config is None:
                raise AccessHeld(cvr, "config", f"municipality {cvr}: {municipality.problem}")
            try:
                client = self._make(municipality.config)
            except (ConfigError, OSError) as exc:
                raise AccessHeld(cvr, "config", f"municipality {cvr}: {exc}") from None
            if isinstance(client.auth, serviceplatformen.SamlTokenAuth):
                client.auth.ready()       # the STS is asked now, once, not in the middle of a batch
        except AccessHeld as exc:
            self._held[cvr] = exc
            log.error("%s; its agencies (%s) are held this run, the other municipalities go on", exc,
                      ", ".join(municipality.agencies))
            if client is not None:
                client.close()
            raise
        self._clients[cvr] = client
        return client

    def held(self) -> dict[str, AccessHeld]:
        """The municipalities held so far in this run, CVR -> why."""
        return dict(self._held)

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    def __enter__(self) -> Clients:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def municipalities_of(rows: Iterable[tuple[str, str]]) -> dict[str, str]:
    """agency -> municipality CVR from ``(agency_id, municipality_cvr)`` rows."""
    return {str(a): str(c or "").strip() for a, c in rows}


def municipalities_from_fbs(fbs: Engine) -> dict[str, str]:
    """agency -> municipality CVR, for every agency of FBS (one query)."""
    with fbs.connect() as conn:
        return municipalities_of(conn.execute(text(sql_file("queries/access_municipalities.sql"))).all())


def clients_for(fbs: Engine, lookup: Lookup) -> Clients:
    """The run's clients: every FBS agency's municipality, its access checked now."""
    return Clients(municipalities_from_fbs(fbs), lookup)
