-- Refused records published again by `learnops dlq replay`: one row per origin record
-- (topic, partition, offset), written after the broker acknowledged the copy, so a
-- second replay of the same letters publishes nothing. Append-only: the audit of who
-- put a record back into a learning topic, and where its copy landed.
--
-- Only the CLI writes it (as the migrating role): a worker refuses records, it never
-- replays them.
CREATE TABLE dead_letter_replays (
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    "offset"       bigint      NOT NULL,
    doer           text        NOT NULL,
    error_types    text[]      NOT NULL,   -- why the stages had refused it
    new_partition  integer     NOT NULL,
    new_offset     bigint      NOT NULL,
    actor          text        NOT NULL,
    replayed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition, "offset")
);

CREATE TRIGGER trigger_dead_letter_replays_append_only
    BEFORE UPDATE OR DELETE ON dead_letter_replays
    FOR EACH ROW EXECUTE FUNCTION refuse_audit_change();
CREATE TRIGGER trigger_dead_letter_replays_no_truncate
    BEFORE TRUNCATE ON dead_letter_replays
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_audit_change();

ALTER FUNCTION learnops_grant_roles() RENAME TO learnops_grant_roles_039;

CREATE FUNCTION learnops_grant_roles() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM learnops_grant_roles_039();
    REVOKE INSERT, UPDATE, DELETE ON dead_letter_replays FROM learnops_worker;
END
$$;
REVOKE EXECUTE ON FUNCTION learnops_grant_roles() FROM PUBLIC;

SELECT learnops_grant_roles();
