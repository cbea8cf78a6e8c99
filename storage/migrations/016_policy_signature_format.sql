-- Policy signatures bind the identity: format 2 signs the canonical JSON of
-- {format, doer, policy_id, version, content_hash} (learning.signing.policy_payload),
-- so an artifact signed for one doer, policy id or version cannot be registered
-- under another. Format 1 signed the artifact alone.
--
-- Nobody but the signer holds the private keys, so stored versions cannot be
-- signed again here: the rows already stored keep format 1 and keep verifying
-- over their artifact (their identity is the one they were registered under,
-- and the row cannot be rewritten), and `learnops policy verify` flags them.
-- Every version stored from now on must be format 2. See docs/security.md.

ALTER TABLE policies ADD COLUMN signature_format smallint NOT NULL DEFAULT 1
    CONSTRAINT policies_signature_format_known CHECK (signature_format IN (1, 2));
ALTER TABLE policies ALTER COLUMN signature_format SET DEFAULT 2;

CREATE FUNCTION refuse_unbound_policy_signature() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.signature_format <> 2 THEN
        RAISE EXCEPTION 'policy %@%: a new version must be signed over its doer, policy id '
            'and version (signature format 2); format 1 is kept only for versions stored '
            'before migration 016', NEW.policy_id, NEW.version
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER trigger_policy_signature_bound
    BEFORE INSERT ON policies
    FOR EACH ROW EXECUTE FUNCTION refuse_unbound_policy_signature();

-- The signature format is part of what was signed: it never changes either.
CREATE OR REPLACE FUNCTION refuse_policy_rewrite() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.policy_id, NEW.version, NEW.doer, NEW.artifact, NEW.artifact_canonical,
        NEW.content_hash, NEW.signature, NEW.signature_format, NEW.key_id,
        NEW.parent_policy_id, NEW.parent_version, NEW.dataset_ids, NEW.experiment_id,
        NEW.created_by, NEW.registered_by, NEW.created_at)
       IS DISTINCT FROM
       (OLD.policy_id, OLD.version, OLD.doer, OLD.artifact, OLD.artifact_canonical,
        OLD.content_hash, OLD.signature, OLD.signature_format, OLD.key_id,
        OLD.parent_policy_id, OLD.parent_version, OLD.dataset_ids, OLD.experiment_id,
        OLD.created_by, OLD.registered_by, OLD.created_at)
    THEN
        RAISE EXCEPTION 'policy %@% is immutable except for its status; register a new version',
            OLD.policy_id, OLD.version USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END
$$;

-- Revoking a key asks which live versions it signed.
CREATE INDEX policies_key_live ON policies (key_id)
    WHERE status IN ('active', 'shadow', 'canary');
