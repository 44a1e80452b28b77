#!/bin/sh
# Runs once, when the postgres container starts on an empty data volume
# (mounted into /docker-entrypoint-initdb.d by deploy/compose.yaml). The passwords come from
# deploy/.env; init.sql itself is mounted outside that folder so the image does not run it a
# second time without them.
set -eu
: "${DB_PASSWORD_PERFCYCLE:?set DB_PASSWORD_PERFCYCLE in deploy/.env}"
: "${DB_PASSWORD_PREFECT:?set DB_PASSWORD_PREFECT in deploy/.env}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v app_password="$DB_PASSWORD_PERFCYCLE" \
    -v prefect_password="$DB_PASSWORD_PREFECT" \
    -f /perfcycle-postgres/init.sql
