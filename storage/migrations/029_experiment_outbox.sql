-- The experiments stage's outbox: what of an experiment's record has reached
-- the broker, so a step recorded by a worker killed before its send is sent
-- by the stage's timer instead of being lost.
--
-- * history_seq: the last experiment_history row's seq (kept by the insert and
--   each move; -1 for a row written without history, which has nothing to send);
-- * published_seq: the last experiment_history row (seq) whose ExperimentChanged
--   the broker acknowledged on learning.experiments; the rows after it are
--   sent in order (their event ids derive from the row, so a row sent twice is
--   one event to a consumer that drops repeated ids). The timer looks for
--   published_seq < history_seq through a partial index, so its look each
--   second costs what is unsent, not every experiment ever run.
-- * deploy_sent_at: when the broker last acknowledged a send of the deployment
--   command (deploy_command_id); NULL while it has not, so the timer sends it
--   again (and again once past its validity with no outcome in the store).
--
-- Transitions recorded before this migration count as sent: their sends were
-- made (or lost) by the code before it, which had no record of them. A
-- deployment command recorded before it counts as sent only if the policy
-- store has its outcome; one it has not is sent again (same event id), which
-- is what a command a kill left unsent needs.
ALTER TABLE experiments ADD COLUMN history_seq integer NOT NULL DEFAULT -1;
ALTER TABLE experiments ADD COLUMN published_seq integer NOT NULL DEFAULT -1;
ALTER TABLE experiments ADD COLUMN deploy_sent_at timestamptz;

UPDATE experiments AS e
SET history_seq = h.seq, published_seq = h.seq
FROM (SELECT experiment_id, max(seq) AS seq FROM experiment_history GROUP BY experiment_id) AS h
WHERE h.experiment_id = e.experiment_id;

UPDATE experiments AS e SET deploy_sent_at = e.updated_at
WHERE e.deploy_command_id IS NOT NULL
  AND EXISTS (SELECT 1 FROM policy_promotions AS p WHERE p.event_id = e.deploy_command_id);

CREATE INDEX experiments_unpublished ON experiments (updated_at)
    WHERE published_seq < history_seq;

-- The same timer settles replays that ended without a verdict (a kill between
-- the last result and the verdict): indexed too, for the same reason.
CREATE INDEX offline_replays_unsettled ON offline_replays (completed_at)
    WHERE verdict IS NULL AND status <> 'running';

-- And the incomplete experiments it resumes once their replays run again.
CREATE INDEX experiments_incomplete ON experiments (updated_at) WHERE status = 'incomplete';
