-- Authorised commands (issue 17): operator keys, their roles per doer pattern,
-- and the commands applied, by event id. See docs/security.md#commands.
--
-- operator_key_events is the append-only history every change to a key goes
-- through (who added, granted or revoked, and when); the current keys and
-- grants are views over it, so nothing is ever updated in place.

CREATE TABLE operator_key_events (
    id           bigserial   PRIMARY KEY,
    key_id       text        NOT NULL CHECK (key_id ~ '^[0-9a-f]{16}$'),
    kind         text        NOT NULL CHECK (kind IN ('add', 'grant', 'revoke')),
    operator     text,          -- add: whose key it is
    public_key   bytea,         -- add: the raw 32-byte Ed25519 public key
    doer_pattern text,          -- grant: fnmatch pattern of doers
    role         text CHECK (role IN ('none', 'viewer', 'operator', 'owner')),  -- grant
    actor        text        NOT NULL,  -- who made the change
    note         text        NOT NULL DEFAULT '',
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK (kind <> 'add' OR (operator IS NOT NULL AND octet_length(public_key) = 32)),
    CHECK (kind <> 'grant' OR (doer_pattern IS NOT NULL AND role IS NOT NULL))
);

CREATE UNIQUE INDEX operator_key_events_one_add ON operator_key_events (key_id)
    WHERE kind = 'add';
CREATE INDEX operator_key_events_key ON operator_key_events (key_id, id);

CREATE TRIGGER trigger_operator_key_events_append_only
    BEFORE UPDATE OR DELETE ON operator_key_events
    FOR EACH ROW EXECUTE FUNCTION refuse_audit_change();
CREATE TRIGGER trigger_operator_key_events_no_truncate
    BEFORE TRUNCATE ON operator_key_events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_audit_change();

-- A key is granted or revoked only once it is added.
CREATE FUNCTION refuse_unknown_operator_key() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.kind <> 'add' AND NOT EXISTS (
        SELECT 1 FROM operator_key_events WHERE key_id = NEW.key_id AND kind = 'add'
    ) THEN
        RAISE EXCEPTION 'operator key % is not registered', NEW.key_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER trigger_operator_key_events_known_key
    BEFORE INSERT ON operator_key_events
    FOR EACH ROW EXECUTE FUNCTION refuse_unknown_operator_key();

CREATE VIEW operator_keys AS
SELECT a.key_id, a.operator, a.public_key, a.actor AS added_by, a.note, a.at AS added_at,
       (SELECT min(r.at) FROM operator_key_events r
         WHERE r.key_id = a.key_id AND r.kind = 'revoke') AS revoked_at
FROM operator_key_events a
WHERE a.kind = 'add';

-- The latest grant of each key and pattern; role 'none' withdraws it.
CREATE VIEW operator_grants AS
SELECT key_id, doer_pattern, role, actor AS granted_by, at AS granted_at
FROM (
    SELECT DISTINCT ON (key_id, doer_pattern) key_id, doer_pattern, role, actor, at
    FROM operator_key_events
    WHERE kind = 'grant'
    ORDER BY key_id, doer_pattern, id DESC
) latest
WHERE role <> 'none';

-- Every command the policy stage applied, once: a command whose event id is
-- here is a replay and is refused, across restarts.
CREATE TABLE applied_commands (
    event_id   uuid        PRIMARY KEY,
    action     text        NOT NULL,
    doer       text        NOT NULL,
    key_id     text        NOT NULL,
    operator   text        NOT NULL,  -- the verified signer, not the self-declared actor
    approver   text,                  -- a forced promotion's second owner
    issued_at  timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX applied_commands_doer ON applied_commands (doer, applied_at);

CREATE TRIGGER trigger_applied_commands_append_only
    BEFORE UPDATE OR DELETE ON applied_commands
    FOR EACH ROW EXECUTE FUNCTION refuse_audit_change();
