# syntax=docker/dockerfile:1
#
# fbs-debitor on Apache Airflow: the official slim Airflow image (no bundled providers, so the
# installed packages are exactly the tested lock) plus the project's pinned Python
# dependencies and its code (dags/, plugins/, include/). Built by docker-compose.yaml; see
# docs/deployment.md. No secret goes into this image: passwords, keys and the Serviceplatformen
# client certificate are given to the containers at run time.
#
# Airflow is upgraded by changing the FROM tag and the apache-airflow pin in requirements.txt
# (and constraints.txt) together; the build fails when the two disagree.
FROM apache/airflow:slim-3.3.2-python3.11

SHELL ["/bin/bash", "-o", "pipefail", "-o", "errexit", "-o", "nounset", "-c"]

# Directories that the named volumes of docker-compose.yaml are mounted on: created here so that a
# new volume starts owned by airflow (uid 50000), group 0, as the image expects.
USER 0
RUN mkdir -p /opt/airflow/logs /opt/airflow/var /opt/airflow/auth \
    && chown 50000:0 /opt/airflow/logs /opt/airflow/var /opt/airflow/auth \
    && chmod 0775 /opt/airflow/logs /opt/airflow/var \
    && chmod 0770 /opt/airflow/auth

# The base image's user "airflow": uid 50000, group 0, Python packages in ~/.local. pip must not
# run as root.
USER 50000
WORKDIR /opt/airflow

# Dependencies first, so a code-only change reuses this layer. requirements.txt holds the exact
# top-level pins, constraints.txt the full tested freeze; "apache-airflow==${AIRFLOW_VERSION}" (the
# base image's own version) makes pip fail rather than silently replace the image's Airflow when
# requirements.txt pins another one. The slim image ships no providers: the ones the project uses
# (postgres, smtp, standard) come from requirements.txt at the tested versions.
COPY requirements.txt constraints.txt /opt/airflow/fbs-debitor-requirements/
RUN pip install --no-cache-dir \
        -r /opt/airflow/fbs-debitor-requirements/requirements.txt \
        -c /opt/airflow/fbs-debitor-requirements/constraints.txt \
        "apache-airflow==${AIRFLOW_VERSION}"

# The project's code, owned by root and read-only for the airflow user. .dockerignore leaves the
# sandbox (plugins/fbs_debitor/sandbox/: generator, emulators, simulators) out of the image.
COPY dags/ /opt/airflow/dags/
COPY plugins/ /opt/airflow/plugins/
COPY include/ /opt/airflow/include/

# FBS_DEBITOR_HOME: where include/ is. FBS_DEBITOR_VAR: writable outputs (reports, dry-run XML),
# a named volume in docker-compose.yaml. PYTHONPATH lets `python -m fbs_debitor` work outside
# Airflow too (Airflow itself puts plugins/ on sys.path).
ENV FBS_DEBITOR_HOME=/opt/airflow \
    FBS_DEBITOR_VAR=/opt/airflow/var \
    PYTHONPATH=/opt/airflow/plugins

# Smoke test: the pinned libraries import and the project's CLI starts.
RUN python -c "import airflow, great_expectations, jinja2, lxml.etree, markupsafe, pandas, psycopg, sqlalchemy, stdnum, zeep" \
    && python -m fbs_debitor --help >/dev/null \
    && python -c "import fbs_debitor.airflow.tasks, fbs_debitor.airflow.notifications" \
    && ! python -c "import fbs_debitor.sandbox" 2>/dev/null
