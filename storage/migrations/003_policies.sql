-- The policy store: signed policy versions, their trusted keys, deployments,
-- an append-only audit of every command and decision, and which version was
-- live for each doer over time. See docs/policy-store.md.

-- Exclusion constraints on (doer, time range) need equality on text in GiST.
-- btree_gist is a trusted extension: the database owner may create it.
CREATE EXTENSION IF NOT EXISTS btree_gist;

-- Public keys that may vouch for a policy artifact. A retired key verifies what
-- it signed before retired_at and signs nothing new; a revoked key verifies nothing.
CREATE TABLE signing_keys (
    key_id      text        PRIMARY KEY,
    algorithm   text        NOT NULL DEFAULT 'ed25519' CHECK (algorithm = 'ed25519'),
    public_key  bytea       NOT NULL UNIQUE CHECK (octet_length(public_key) = 32),
    note        text        NOT NULL DEFAULT '',
    created_by  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    retired_at  timestamptz,
    revoked_at  timestamptz,
    -- The key id is the first 16 hex digits of SHA-256 of the raw key (learning.signing).
    CONSTRAINT signing_keys_id_is_the_keys CHECK (
        key_id = substr(encode(sha256(public_key), 'hex'), 1, 16)
    )
);

-- One row per policy version. The artifact is kept twice: artifact_canonical
-- holds the exact RFC 8785 bytes that were signed (what verification reads),
-- artifact the same JSON as JSONB (what people query). Both are set once.
CREATE TABLE policies (
    policy_id          text        NOT NULL,
    version            integer     NOT NULL CHECK (version >= 1),
    doer               text        NOT NULL,
    status             text        NOT NULL DEFAULT 'draft' CHECK (
        status IN ('draft', 'shadow', 'canary', 'active', 'archived', 'rolled_back')
    ),
    artifact           jsonb       NOT NULL,
    artifact_canonical bytea       NOT NULL,
    content_hash       text        NOT NULL CHECK (content_hash ~ '^[0-9a-f]{64}$'),
    signature          text        NOT NULL,  -- base64 Ed25519 over artifact_canonical
    key_id             text        NOT NULL REFERENCES signing_keys (key_id),
    parent_policy_id   text,
    parent_version     integer,
    dataset_ids        text[]      NOT NULL DEFAULT '{}',
    experiment_id      text,
    created_by         text        NOT NULL,
    registered_by      uuid        NOT NULL UNIQUE,  -- event_id of the register command
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (policy_id, version),
    FOREIGN KEY (parent_policy_id, parent_version) REFERENCES policies (policy_id, version),
    CHECK ((parent_policy_id IS NULL) = (parent_version IS NULL))
);

-- Exactly one active policy per doer, whatever the code does.
CREATE UNIQUE INDEX policies_one_active_per_doer ON policies (doer) WHERE status = 'active';
-- At most one candidate (shadow or canary) per doer.
CREATE UNIQUE INDEX policies_one_candidate_per_doer ON policies (doer)
    WHERE status IN ('shadow', 'canary');
CREATE INDEX policies_doer ON policies (doer, created_at);
CREATE INDEX policies_dataset_ids ON policies USING gin (dataset_ids);
CREATE INDEX policies_experiment ON policies (experiment_id) WHERE experiment_id IS NOT NULL;

CREATE FUNCTION set_policy_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER trigger_policy_updated
    BEFORE UPDATE ON policies
    FOR EACH ROW EXECUTE FUNCTION set_policy_updated_at();

-- What was signed, and where it came from, never changes: only status moves.
CREATE FUNCTION refuse_policy_rewrite() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.policy_id, NEW.version, NEW.doer, NEW.artifact, NEW.artifact_canonical,
        NEW.content_hash, NEW.signature, NEW.key_id, NEW.parent_policy_id,
        NEW.parent_version, NEW.dataset_ids, NEW.experiment_id, NEW.created_by,
        NEW.registered_by, NEW.created_at)
       IS DISTINCT FROM
       (OLD.policy_id, OLD.version, OLD.doer, OLD.artifact, OLD.artifact_canonical,
        OLD.content_hash, OLD.signature, OLD.key_id, OLD.parent_policy_id,
        OLD.parent_version, OLD.dataset_ids, OLD.experiment_id, OLD.created_by,
        OLD.registered_by, OLD.created_at)
    THEN
        RAISE EXCEPTION 'policy %@% is immutable except for its status; register a new version',
            OLD.policy_id, OLD.version USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER trigger_policy_immutable
    BEFORE UPDATE ON policies
    FOR EACH ROW EXECUTE FUNCTION refuse_policy_rewrite();

CREATE FUNCTION refuse_policy_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% keeps every version and record; nothing is deleted', TG_TABLE_NAME
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;

CREATE TRIGGER trigger_policy_kept
    BEFORE DELETE ON policies
    FOR EACH ROW EXECUTE FUNCTION refuse_policy_delete();

-- The audit: one row per command or decision event the policy agent handled,
-- applied or refused. Unique on event_id, so a replayed event adds no row.
-- Append-only. to_status is the status after the event (from_status when refused).
CREATE TABLE policy_promotions (
    id                 bigserial   PRIMARY KEY,
    event_id           uuid        NOT NULL UNIQUE,
    source             text        NOT NULL CHECK (source IN ('command', 'decision')),
    action             text        NOT NULL CHECK (
        action IN ('register', 'start_shadow', 'start_canary', 'promote', 'rollback', 'archive')
    ),
    doer               text        NOT NULL,
    policy_id          text,
    version            integer,
    from_status        text,       -- NULL for a registration
    to_status          text,       -- NULL for a refused registration
    requested_status   text        NOT NULL,
    outcome            text        NOT NULL CHECK (outcome IN ('applied', 'refused')),
    refusal            text        CHECK (
        refusal IN ('signature', 'lifecycle', 'unknown', 'conflict', 'artifact')
    ),
    forced             boolean     NOT NULL DEFAULT false,
    actor              text        NOT NULL,
    reason             text        NOT NULL,  -- what the requester said
    verdict            text        NOT NULL,  -- what the store decided, and why
    deployment_id      text,
    previous_policy_id text,       -- the active version a promotion archived
    previous_version   integer,
    decision_report    jsonb,      -- the canary's evidence, when a decision drove the move
    occurred_at        timestamptz NOT NULL,  -- when the command or decision was made
    recorded_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK ((outcome = 'refused') = (refusal IS NOT NULL)),
    CHECK (outcome = 'refused' OR to_status IS NOT NULL)
);

CREATE INDEX policy_promotions_policy ON policy_promotions (policy_id, version, id);
CREATE INDEX policy_promotions_doer ON policy_promotions (doer, id);

CREATE FUNCTION refuse_audit_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;

CREATE TRIGGER trigger_policy_promotions_append_only
    BEFORE UPDATE OR DELETE ON policy_promotions
    FOR EACH ROW EXECUTE FUNCTION refuse_audit_change();
CREATE TRIGGER trigger_policy_promotions_no_truncate
    BEFORE TRUNCATE ON policy_promotions
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_audit_change();

-- Shadow and canary deployments of candidate versions, each against the
-- active version (the control) of when it started.
CREATE TABLE shadow_deployments (
    deployment_id     text             PRIMARY KEY,
    doer              text             NOT NULL,
    policy_id         text             NOT NULL,
    version           integer          NOT NULL,
    control_policy_id text             NOT NULL,
    control_version   integer          NOT NULL,
    mode              text             NOT NULL CHECK (mode IN ('shadow', 'canary')),
    salt              text             NOT NULL,
    allocation        double precision NOT NULL CHECK (allocation > 0 AND allocation <= 1),
    step              integer          NOT NULL DEFAULT 0 CHECK (step >= 0),
    steps             double precision[] NOT NULL DEFAULT '{}',
    require_approval  boolean          NOT NULL DEFAULT false,
    started_by        uuid             NOT NULL REFERENCES policy_promotions (event_id),
    started_at        timestamptz      NOT NULL,
    ended_by          uuid             REFERENCES policy_promotions (event_id),
    ended_at          timestamptz,
    outcome           text             CHECK (outcome IN ('promoted', 'rolled_back', 'advanced')),
    FOREIGN KEY (policy_id, version) REFERENCES policies (policy_id, version),
    FOREIGN KEY (control_policy_id, control_version) REFERENCES policies (policy_id, version),
    CHECK ((ended_at IS NULL) = (outcome IS NULL) AND (ended_at IS NULL) = (ended_by IS NULL))
);

CREATE UNIQUE INDEX shadow_deployments_one_live_per_doer ON shadow_deployments (doer) WHERE ended_at IS NULL;
CREATE INDEX shadow_deployments_policy ON shadow_deployments (policy_id, version);

-- Which version was active for each doer, from when to when (active_to NULL:
-- still active). Intervals of one doer never overlap, so "what was live at T"
-- has at most one answer:
--   SELECT * FROM policy_activations
--   WHERE doer = $1 AND active_from <= $2 AND (active_to IS NULL OR active_to > $2)
CREATE TABLE policy_activations (
    id           bigserial   PRIMARY KEY,
    doer         text        NOT NULL,
    policy_id    text        NOT NULL,
    version      integer     NOT NULL,
    active_from  timestamptz NOT NULL,
    active_to    timestamptz,
    promoted_by  uuid        NOT NULL REFERENCES policy_promotions (event_id),
    archived_by  uuid        REFERENCES policy_promotions (event_id),
    FOREIGN KEY (policy_id, version) REFERENCES policies (policy_id, version),
    CHECK (active_to IS NULL OR active_to >= active_from),
    CHECK ((active_to IS NULL) = (archived_by IS NULL)),
    CONSTRAINT policy_activations_no_overlap EXCLUDE USING gist (
        doer WITH =, tstzrange(active_from, active_to, '[)') WITH &&
    )
);

CREATE UNIQUE INDEX policy_activations_one_open_per_doer ON policy_activations (doer)
    WHERE active_to IS NULL;
CREATE INDEX policy_activations_doer_time ON policy_activations (doer, active_from);
