#!/usr/bin/env bash
# Sizes the CeleryExecutor from the machine's cores, checks the sizes, then starts the component.
# (docker-compose.yaml; in the image at /opt/airflow/include/airflow/celery-sized.sh)
#
#   celery-sized.sh scheduler   AIRFLOW__CORE__PARALLELISM = AIRFLOW_PARALLELISM, or with "auto" the
#                               task slots of all workers: AIRFLOW_CELERY_WORKERS x worker concurrency
#   celery-sized.sh worker      airflow celery worker --concurrency <AIRFLOW_WORKER_CONCURRENCY>
#   celery-sized.sh print       the three sizes, for a look before starting anything
#
# AIRFLOW_WORKER_CONCURRENCY  "auto" (default): two task slots per core the container sees, at least 4,
#                             at most 32, as ./run sizes the LocalExecutor (the tasks mostly wait on the
#                             databases and the debtor system); or a whole number 1-256.
# AIRFLOW_CELERY_WORKERS      the number of worker containers (deploy.replicas), 1-64 (default 2).
# AIRFLOW_PARALLELISM         "auto" (default) or a whole number 1-1024: the most tasks running at once.
# A value outside its range stops the component with exit code 3 and says what is allowed.
set -euo pipefail
shopt -s inherit_errexit   # a size that fails its check inside "$(...)" stops the script

fail() { echo "$1" >&2; exit 3; }

whole() {
  # whole NAME VALUE MAX [OR]: VALUE is a whole number from 1 to MAX, else stop (the message says
  # what is allowed: OR, default "auto or ", then the range).
  local allowed="$1=$2: allowed is ${4-auto or }a whole number from 1 to $3"
  case "$2" in
    ''|*[!0-9]*|0*) fail "$allowed" ;;
  esac
  if [ "${#2}" -gt 4 ] || [ "$2" -gt "$3" ]; then fail "$allowed"; fi
  echo "$2"
}

concurrency() {
  local n="${AIRFLOW_WORKER_CONCURRENCY:-auto}" cores
  if [ "$n" = auto ]; then
    cores="$(nproc 2>/dev/null || echo 2)"
    n=$((cores * 2))
    if [ "$n" -lt 4 ]; then n=4; fi
    if [ "$n" -gt 32 ]; then n=32; fi
  fi
  whole AIRFLOW_WORKER_CONCURRENCY "$n" 256
}

workers() { whole AIRFLOW_CELERY_WORKERS "${AIRFLOW_CELERY_WORKERS:-2}" 64 ""; }

parallelism() {
  local n="${AIRFLOW_PARALLELISM:-auto}" c w
  if [ "$n" = auto ]; then
    c="$(concurrency)"; w="$(workers)"
    n=$((c * w))
    if [ "$n" -gt 1024 ]; then n=1024; fi
  fi
  whole AIRFLOW_PARALLELISM "$n" 1024
}

case "${1:-}" in
  scheduler)
    shift
    AIRFLOW__CORE__PARALLELISM="$(parallelism)"
    export AIRFLOW__CORE__PARALLELISM
    echo "CeleryExecutor: $AIRFLOW__CORE__PARALLELISM task slots in all (AIRFLOW_PARALLELISM)" >&2
    exec airflow scheduler "$@"
    ;;
  worker)
    shift
    c="$(concurrency)"
    echo "Celery worker: $c task slots (AIRFLOW_WORKER_CONCURRENCY; $(nproc 2>/dev/null || echo '?') cores)" >&2
    exec airflow celery worker --concurrency "$c" "$@"
    ;;
  print)
    w="$(workers)"; c="$(concurrency)"; p="$(parallelism)"
    echo "workers=$w concurrency=$c parallelism=$p"
    ;;
  *)
    fail "usage: celery-sized.sh scheduler|worker|print [airflow options]"
    ;;
esac
