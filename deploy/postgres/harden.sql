-- perfcycle hardening: a separate role owns the tables, so the application cannot drop or
-- disable the append-only triggers on audit_events (migration 0002), nor change the schema.
-- Run as a superuser (or the managed service's admin) on the perfcycle database, after the
-- first `perfcycle db upgrade`; re-running it is harmless.
--
--   psql -v ON_ERROR_STOP=1 -v owner_password='...' -d perfcycle -f deploy/postgres/harden.sql
--
-- Afterwards run migrations as perfcycle_owner (deploy/README.md, "Hardened database");
-- perfcycle_app keeps SELECT/INSERT/UPDATE/DELETE, but only SELECT/INSERT on audit_events.

\set ON_ERROR_STOP on

DO $$
BEGIN
    IF to_regclass('public.audit_events') IS NULL THEN
        RAISE EXCEPTION 'no table public.audit_events in database %: connect to the perfcycle '
            'database (-d perfcycle) after running `perfcycle db upgrade`', current_database();
    END IF;
END $$;

SELECT format('CREATE ROLE perfcycle_owner LOGIN PASSWORD %L', :'owner_password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'perfcycle_owner') \gexec
ALTER ROLE perfcycle_owner NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;

-- On a managed service the admin is not a superuser: REASSIGN OWNED needs membership in both.
GRANT perfcycle_owner TO CURRENT_USER;
GRANT perfcycle_app TO CURRENT_USER;

SELECT format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO perfcycle_owner', current_database())
\gexec
GRANT USAGE, CREATE ON SCHEMA public TO perfcycle_owner;

-- Tables, their sequences, and the trigger function move to the owner.
REASSIGN OWNED BY perfcycle_app TO perfcycle_owner;
REVOKE CREATE ON SCHEMA public FROM perfcycle_app;
GRANT USAGE ON SCHEMA public TO perfcycle_app;

GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO perfcycle_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO perfcycle_app;
-- The triggers already refuse these; without the privilege the refusal comes earlier.
REVOKE UPDATE, DELETE, TRUNCATE ON audit_events FROM perfcycle_app;
-- Only migrations (as the owner) move the schema revision.
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON alembic_version FROM perfcycle_app;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO perfcycle_readonly;

-- Tables that later migrations create get the same privileges.
ALTER DEFAULT PRIVILEGES FOR ROLE perfcycle_owner IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO perfcycle_app;
ALTER DEFAULT PRIVILEGES FOR ROLE perfcycle_owner IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO perfcycle_app;
ALTER DEFAULT PRIVILEGES FOR ROLE perfcycle_owner IN SCHEMA public
    GRANT SELECT ON TABLES TO perfcycle_readonly;
