-- Least-privilege roles and the signing keys' append-only history.
-- See docs/security.md ("Database roles") for which process uses which role.
--
-- The role that runs the migrations owns every object. Three other roles get
-- only what their process needs:
--   learnops_worker    the stream worker: reads everything, writes rows, but no
--                      DDL, no TRUNCATE, no UPDATE/DELETE on append-only tables,
--                      and no write to the keyring;
--   learnops_reader    the dashboard and read-only CLI commands: SELECT only;
--   learnops_keyadmin  `learnops policy keys ...`: adds keys and appends their
--                      status changes (retire, revoke), nothing else.
-- Only an owner may ALTER TABLE ... DISABLE TRIGGER, so none of them can switch
-- the append-only triggers off. The grants are applied by learnops_grant_roles(),
-- which `learnops db migrate` calls after every run, so tables added by later
-- migrations are covered too (default privileges cover tables made outside it).

-- Roles are cluster-wide; scripts/postgres.sh (or the DBA) creates them as
-- LOGIN roles with passwords. A migrating role with CREATEROLE creates missing
-- ones as NOLOGIN groups; one without it is told what to do.
DO $$
DECLARE
    wanted text;
BEGIN
    FOREACH wanted IN ARRAY ARRAY['learnops_worker', 'learnops_reader', 'learnops_keyadmin'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = wanted) THEN
            IF NOT EXISTS (
                SELECT 1 FROM pg_roles WHERE rolname = current_user AND (rolcreaterole OR rolsuper)
            ) THEN
                RAISE EXCEPTION 'role % does not exist and % may not create it', wanted, current_user
                    USING HINT = 'create the roles learnops_worker, learnops_reader and '
                                 'learnops_keyadmin first (docs/security.md), then migrate again';
            END IF;
            EXECUTE format('CREATE ROLE %I NOLOGIN', wanted);
        END IF;
    END LOOP;
END
$$;

-- No role but the owner creates objects in the schema (PostgreSQL 15 and later
-- already revoke CREATE from PUBLIC; older servers do not).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- Every status change of a signing key, with who made it. Append-only: the
-- keyring's retired_at and revoked_at are set from here, and only from here.
CREATE TABLE signing_key_events (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key_id      text        NOT NULL REFERENCES signing_keys (key_id),
    action      text        NOT NULL CHECK (action IN ('added', 'retired', 'revoked')),
    actor       text        NOT NULL CHECK (actor <> ''),
    note        text        NOT NULL DEFAULT '',
    at          timestamptz NOT NULL DEFAULT now(),
    -- The database role that wrote the row, whatever actor the client claims.
    db_role     name        NOT NULL DEFAULT current_user
);
CREATE INDEX signing_key_events_key ON signing_key_events (key_id, id);

-- History before this migration: what the keyring itself remembers.
INSERT INTO signing_key_events (key_id, action, actor, note, at, db_role)
SELECT key_id, 'added', created_by, note, created_at, 'unknown' FROM signing_keys
UNION ALL
SELECT key_id, 'retired', 'unknown (before migration 021)', '', retired_at, 'unknown'
  FROM signing_keys WHERE retired_at IS NOT NULL
UNION ALL
SELECT key_id, 'revoked', 'unknown (before migration 021)', note, revoked_at, 'unknown'
  FROM signing_keys WHERE revoked_at IS NOT NULL
ORDER BY 5, 1;

CREATE TRIGGER trigger_signing_key_events_append_only
    BEFORE UPDATE OR DELETE ON signing_key_events
    FOR EACH ROW EXECUTE FUNCTION refuse_audit_change();
CREATE TRIGGER trigger_signing_key_events_no_truncate
    BEFORE TRUNCATE ON signing_key_events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_audit_change();

-- A new key gets its 'added' event from the row itself.
CREATE FUNCTION record_signing_key_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO signing_key_events (key_id, action, actor, note, at)
    VALUES (NEW.key_id, 'added', NEW.created_by, NEW.note, NEW.created_at);
    RETURN NULL;
END
$$;
CREATE TRIGGER trigger_signing_key_added
    AFTER INSERT ON signing_keys
    FOR EACH ROW EXECUTE FUNCTION record_signing_key_added();

-- A retire or revoke event moves the keyring's timestamps (first one wins). It
-- runs as the owner (SECURITY DEFINER) because no other role may UPDATE
-- signing_keys; search_path is pinned so a caller cannot redirect it.
CREATE FUNCTION apply_signing_key_event() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    IF NEW.action = 'retired' THEN
        UPDATE signing_keys SET retired_at = NEW.at WHERE key_id = NEW.key_id AND retired_at IS NULL;
    ELSIF NEW.action = 'revoked' THEN
        UPDATE signing_keys SET revoked_at = NEW.at WHERE key_id = NEW.key_id AND revoked_at IS NULL;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER trigger_signing_key_event_applied
    AFTER INSERT ON signing_key_events
    FOR EACH ROW EXECUTE FUNCTION apply_signing_key_event();

-- The keyring row is immutable except through an event: retired_at and
-- revoked_at are set once (never cleared or moved), by apply_signing_key_event
-- only; a key is never deleted (policies reference it; revoke it instead).
CREATE FUNCTION refuse_signing_key_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' THEN
        RAISE EXCEPTION 'signing keys are never deleted; revoke the key instead'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF NEW.key_id IS DISTINCT FROM OLD.key_id OR NEW.public_key IS DISTINCT FROM OLD.public_key
        OR NEW.algorithm IS DISTINCT FROM OLD.algorithm OR NEW.note IS DISTINCT FROM OLD.note
        OR NEW.created_by IS DISTINCT FROM OLD.created_by
        OR NEW.created_at IS DISTINCT FROM OLD.created_at THEN
        RAISE EXCEPTION 'signing key % is immutable; its status moves by signing_key_events', OLD.key_id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF (OLD.revoked_at IS NOT NULL AND NEW.revoked_at IS DISTINCT FROM OLD.revoked_at)
        OR (OLD.retired_at IS NOT NULL AND NEW.retired_at IS DISTINCT FROM OLD.retired_at) THEN
        RAISE EXCEPTION 'signing key % cannot be un-revoked or un-retired', OLD.key_id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    -- Depth 1 is a direct UPDATE; an event's trigger updates at depth 2.
    IF pg_trigger_depth() < 2 THEN
        RAISE EXCEPTION 'signing key % changes status only by a row in signing_key_events', OLD.key_id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER trigger_signing_key_immutable
    BEFORE UPDATE OR DELETE ON signing_keys
    FOR EACH ROW EXECUTE FUNCTION refuse_signing_key_change();
CREATE TRIGGER trigger_signing_key_no_truncate
    BEFORE TRUNCATE ON signing_keys
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_audit_change();

-- The grants, re-applied by `learnops db migrate` after every run. Tables whose
-- triggers make them append-only (refuse_audit_change) lose UPDATE and DELETE
-- for the worker; the keyring is the key administrator's alone.
CREATE FUNCTION learnops_grant_roles() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    append_only regclass;
BEGIN
    GRANT USAGE ON SCHEMA public TO learnops_worker, learnops_reader, learnops_keyadmin;
    GRANT SELECT ON ALL TABLES IN SCHEMA public
        TO learnops_worker, learnops_reader, learnops_keyadmin;
    GRANT SELECT ON ALL SEQUENCES IN SCHEMA public
        TO learnops_worker, learnops_reader, learnops_keyadmin;
    GRANT INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO learnops_worker;
    GRANT USAGE, UPDATE ON ALL SEQUENCES IN SCHEMA public TO learnops_worker;

    FOR append_only IN
        SELECT DISTINCT t.tgrelid::regclass
          FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
         WHERE p.proname = 'refuse_audit_change' AND NOT t.tgisinternal
    LOOP
        EXECUTE format('REVOKE UPDATE, DELETE ON %s FROM learnops_worker', append_only);
    END LOOP;

    -- The keyrings: policy signing keys, and operator keys with their roles (018).
    -- A worker that could write them could grant itself any role.
    REVOKE INSERT, UPDATE, DELETE
        ON schema_migrations, signing_keys, signing_key_events, operator_key_events
        FROM learnops_worker;
    GRANT INSERT ON signing_keys, signing_key_events, operator_key_events TO learnops_keyadmin;
    GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO learnops_keyadmin;
END
$$;
-- The migrating role only: the others must not re-grant themselves anything.
REVOKE EXECUTE ON FUNCTION learnops_grant_roles() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION apply_signing_key_event() FROM PUBLIC;

-- Objects the owner creates later, in or outside a migration.
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT SELECT ON TABLES TO learnops_worker, learnops_reader, learnops_keyadmin;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT INSERT, UPDATE, DELETE ON TABLES TO learnops_worker;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT SELECT, USAGE, UPDATE ON SEQUENCES TO learnops_worker;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT SELECT ON SEQUENCES TO learnops_reader, learnops_keyadmin;

SELECT learnops_grant_roles();
