-- perfcycle: databases and roles on PostgreSQL 15+. Run once, as a superuser (or a managed
-- service's admin role), on the cluster; re-running it changes nothing that already exists.
--
--   psql -v ON_ERROR_STOP=1 -v app_password='...' -v prefect_password='...' \
--        -d postgres -f deploy/postgres/init.sql
--
-- deploy/compose.yaml runs it through initdb.sh on the first start of an empty data volume.
--
-- What it creates:
--   perfcycle_app       LOGIN  flows and portal (PERFCYCLE_DATABASE_URL). No superuser, no
--                              CREATEDB/CREATEROLE; may create tables only in perfcycle's public
--                              schema, so that `perfcycle db upgrade` can run as this role.
--   perfcycle_readonly  group  SELECT on every perfcycle table; auditors' login roles join it.
--   prefect             LOGIN  owner of the Prefect server's database only.
--   perfcycle, prefect  databases, UTF-8 (names and comments are Chinese), closed to PUBLIC.
--
-- Migration 0002 installs triggers that make audit_events append-only. A trigger can be
-- dropped by the table's owner: after the first `perfcycle db upgrade`, run harden.sql so that
-- a separate role owns the tables and perfcycle_app cannot remove them (deploy/README.md).

\set ON_ERROR_STOP on

SELECT format('CREATE ROLE perfcycle_app LOGIN PASSWORD %L', :'app_password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'perfcycle_app') \gexec
SELECT 'CREATE ROLE perfcycle_readonly NOLOGIN'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'perfcycle_readonly') \gexec
SELECT format('CREATE ROLE prefect LOGIN PASSWORD %L', :'prefect_password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'prefect') \gexec

ALTER ROLE perfcycle_app NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
ALTER ROLE prefect NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;

-- On a managed service the admin is not a superuser: to create a database owned by `prefect`
-- it must be a member of that role (PostgreSQL 15 does not grant this automatically).
GRANT prefect TO CURRENT_USER;

SELECT 'CREATE DATABASE perfcycle ENCODING ''UTF8'' TEMPLATE template0'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'perfcycle') \gexec
SELECT 'CREATE DATABASE prefect OWNER prefect ENCODING ''UTF8'' TEMPLATE template0'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'prefect') \gexec

REVOKE ALL ON DATABASE perfcycle FROM PUBLIC;
REVOKE ALL ON DATABASE prefect FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE perfcycle TO perfcycle_app;
GRANT CONNECT ON DATABASE perfcycle TO perfcycle_readonly;
GRANT CONNECT, TEMPORARY ON DATABASE prefect TO prefect;

\connect perfcycle

REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO perfcycle_app;
GRANT USAGE ON SCHEMA public TO perfcycle_readonly;

-- Tables the migrations create (as perfcycle_app, until harden.sql) are readable by auditors.
ALTER DEFAULT PRIVILEGES FOR ROLE perfcycle_app IN SCHEMA public
    GRANT SELECT ON TABLES TO perfcycle_readonly;
