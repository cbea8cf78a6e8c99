-- The evidence an experiment was decided on never changes afterwards.
-- See docs/experiments.md ("Evidence").
--
-- offline_replays rows are shared by content hash: two experiments that replay
-- the same policy on the same dataset and seeds share one row, and a policy's
-- replay is also the control of the next experiment once it is active. The
-- row's control_replay_id and verdict describe the latest comparison asked of
-- it (the experiments stage's working state), and a forced or repeated attempt
-- rewrites its figures. What a decision stood on is therefore recorded apart:
--
-- * replay_comparisons: one append-only row per verdict given, naming both
--   replays, the attempt of each and their result blobs (content-addressed,
--   so the figures behind the verdict stay readable);
-- * experiments.comparison_id: the comparison an experiment was decided on,
--   captured by a trigger when the decision is recorded (its deployment
--   command is set, or it leaves 'replaying'); from then on the experiment's
--   replay_id, control_replay_id, comparison_id and outcome cannot change
--   (until an incomplete experiment is retried: that is a new decision, and
--   the last one's evidence stays in experiment_history).

CREATE TABLE replay_comparisons (
    id                  bigserial   PRIMARY KEY,
    replay_id           text        NOT NULL REFERENCES offline_replays (replay_id),
    attempt             integer     NOT NULL CHECK (attempt >= 1),
    control_replay_id   text        REFERENCES offline_replays (replay_id),
    control_attempt     integer     CHECK (control_attempt >= 1),
    verdict             jsonb       NOT NULL,  -- {passed, incomplete, reason, numbers}
    result_hash         text        REFERENCES blobs (sha256),  -- NULL when incomplete
    control_result_hash text        REFERENCES blobs (sha256),
    decided_at          timestamptz NOT NULL DEFAULT now(),
    CHECK ((control_replay_id IS NULL) = (control_attempt IS NULL)),
    UNIQUE NULLS NOT DISTINCT (replay_id, attempt, control_replay_id, control_attempt)
);

CREATE INDEX replay_comparisons_pair ON replay_comparisons (replay_id, control_replay_id, id);

CREATE TRIGGER trigger_replay_comparisons_append_only
    BEFORE UPDATE OR DELETE ON replay_comparisons
    FOR EACH ROW EXECUTE FUNCTION refuse_audit_change();
CREATE TRIGGER trigger_replay_comparisons_no_truncate
    BEFORE TRUNCATE ON replay_comparisons
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_audit_change();

-- The verdicts given before this migration, as far as the shared rows still hold them.
INSERT INTO replay_comparisons (
    replay_id, attempt, control_replay_id, control_attempt, verdict, result_hash,
    control_result_hash, decided_at
)
SELECT r.replay_id, r.attempt, r.control_replay_id, c.attempt, r.verdict, r.result_hash,
       c.result_hash, coalesce(r.completed_at, r.started_at)
FROM offline_replays AS r
LEFT JOIN offline_replays AS c ON c.replay_id = r.control_replay_id
WHERE r.verdict IS NOT NULL;

ALTER TABLE experiments
    ADD COLUMN comparison_id bigint REFERENCES replay_comparisons (id);

-- Experiments decided before this migration: linked only where the comparison
-- still recorded is the one their outcome quotes (a rewritten one is left out).
UPDATE experiments AS e SET comparison_id = (
    SELECT max(c.id) FROM replay_comparisons AS c
    WHERE c.replay_id = e.replay_id
      AND c.control_replay_id IS NOT DISTINCT FROM e.control_replay_id
      AND c.verdict = e.outcome -> 'verdict'
)
WHERE e.replay_id IS NOT NULL AND e.outcome ? 'verdict';

CREATE FUNCTION keep_experiment_evidence() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A retry of an incomplete experiment is a new decision to come; the last
    -- one's evidence stays in its experiment_history row (append-only).
    IF OLD.status = 'incomplete' AND NEW.status = 'replaying' THEN
        NEW.comparison_id := NULL;
        NEW.outcome := '{}'::jsonb;
        RETURN NEW;
    END IF;
    -- Capture: the decision is being recorded now.
    IF OLD.comparison_id IS NULL AND NEW.comparison_id IS NULL AND NEW.replay_id IS NOT NULL
       AND ((OLD.deploy_command_id IS NULL AND NEW.deploy_command_id IS NOT NULL)
            OR (OLD.status = 'replaying' AND NEW.status <> 'replaying')) THEN
        SELECT c.id INTO NEW.comparison_id FROM replay_comparisons AS c
        WHERE c.replay_id = NEW.replay_id
          AND c.control_replay_id IS NOT DISTINCT FROM NEW.control_replay_id
        ORDER BY c.id DESC LIMIT 1;
    END IF;
    -- Keep: what the decision stood on.
    IF OLD.comparison_id IS NOT NULL AND (
           NEW.comparison_id IS DISTINCT FROM OLD.comparison_id
        OR NEW.replay_id IS DISTINCT FROM OLD.replay_id
        OR NEW.control_replay_id IS DISTINCT FROM OLD.control_replay_id) THEN
        RAISE EXCEPTION 'experiment %: the replays and verdict it was decided on cannot change',
            OLD.experiment_id USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF OLD.outcome <> '{}'::jsonb AND NEW.outcome IS DISTINCT FROM OLD.outcome THEN
        RAISE EXCEPTION 'experiment %: its recorded outcome cannot change', OLD.experiment_id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER trigger_experiments_keep_evidence
    BEFORE UPDATE ON experiments
    FOR EACH ROW EXECUTE FUNCTION keep_experiment_evidence();
