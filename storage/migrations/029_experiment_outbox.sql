-- The experiments stage's outbox: what of an experiment's record has reached
-- the broker, so a step recorded by a worker killed before its send is sent
-- by the stage's timer instead of being lost.
--
-- * published_seq: the last experiment_history row (seq) whose ExperimentChanged
--   the broker acknowledged on learning.experiments; the rows after it are
--   sent in order (their event ids derive from the row, so a row sent twice is
--   one event to a consumer that drops repeated ids).
-- * deploy_sent_at: when the broker acknowledged the deployment command
--   (deploy_command_id); NULL while it has not, so the timer sends it again.
--
-- Rows recorded before this migration count as sent: their sends were made (or
-- lost) by the code before it, which had no record of them.
ALTER TABLE experiments ADD COLUMN published_seq integer NOT NULL DEFAULT -1;
ALTER TABLE experiments ADD COLUMN deploy_sent_at timestamptz;

UPDATE experiments AS e
SET published_seq = coalesce(
        (SELECT max(h.seq) FROM experiment_history AS h WHERE h.experiment_id = e.experiment_id),
        -1),
    deploy_sent_at = CASE WHEN e.deploy_command_id IS NOT NULL THEN e.updated_at END;
