#!/usr/bin/env bash
# Creates the two databases of the fbs-debitor deployment on the compose `postgres` service:
#
#   airflow  - the Airflow metadata database, owned by login role `airflow`
#   debitor  - the fbs-debitor ledger database (schema `ledger`), owned by login role `debitor`
#
# The postgres image runs the files in /docker-entrypoint-initdb.d only when it starts on an EMPTY
# data volume, so this runs once per deployment. Passwords come from the container environment
# (AIRFLOW_DB_PASSWORD, LEDGER_DB_PASSWORD; see docker-compose.yaml) and are handed to psql as
# variables, never pasted into SQL text. Changing them later is ALTER ROLE ... PASSWORD, not this file.
#
# No `set -u` here: the image may source (not execute) this file inside its own entrypoint.
set -eo pipefail

if [ -z "${AIRFLOW_DB_PASSWORD:-}" ] || [ -z "${LEDGER_DB_PASSWORD:-}" ]; then
    echo "10-fbs-debitor-databases.sh: AIRFLOW_DB_PASSWORD and LEDGER_DB_PASSWORD must be set" >&2
    exit 1
fi

psql -v ON_ERROR_STOP=1 \
    --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-${POSTGRES_USER:-postgres}}" \
    --set airflow_password="${AIRFLOW_DB_PASSWORD}" \
    --set ledger_password="${LEDGER_DB_PASSWORD}" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'airflow_password';
CREATE DATABASE airflow OWNER airflow;
REVOKE ALL ON DATABASE airflow FROM PUBLIC;

CREATE ROLE debitor LOGIN PASSWORD :'ledger_password';
CREATE DATABASE debitor OWNER debitor;
REVOKE ALL ON DATABASE debitor FROM PUBLIC;
SQL

echo "10-fbs-debitor-databases.sh: created databases airflow and debitor with their owner roles"
