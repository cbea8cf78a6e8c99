-- Replay tasks named by their replay; the replays the old naming cut short, reopened.
--
-- A task id was a function of (policy, manifest, sample, seed) alone, and
-- offline_replay_tasks is keyed by it. A replay whose seed set overlapped an
-- earlier replay's (the same policy and golden dataset, seeds 44-46 after
-- 42-45) found the shared tasks taken by the earlier one: their results were
-- dropped (looked up under the new replay id) and the replay completed on the
-- seeds it had alone, with a verdict on fewer seeds than it named and nothing
-- said. A later attempt of the second replay could also reset the earlier one's
-- rows. From now on a task id is a function of (replay id, sample, seed)
-- (models.ids.replay_task_id), so every replay has its own tasks.
--
-- Here: every complete replay with fewer scored tasks of its own than it has
-- tasks is marked incomplete, listing the (sample, seed) pairs it lacks
-- (task_id null: that task will get its id at the next attempt), and its
-- verdict and the verdicts of the replays compared with it are cleared, so
-- the experiments stage settles them again (as incomplete) and the experiments
-- still replaying on them end incomplete. `learnops replay run` starts the next
-- attempt. Experiments concluded on such a verdict before this migration keep
-- their history (docs/experiments.md, "Ids").
CREATE TEMPORARY TABLE cut_short ON COMMIT DROP AS
SELECT r.replay_id,
       COALESCE(
           (SELECT jsonb_agg(
                       jsonb_build_object('task_id', NULL, 'sample_id', g.sample_id, 'seed', s.seed)
                       ORDER BY s.seed, g.sample_id)
            FROM unnest(r.seeds) AS s (seed)
            CROSS JOIN golden_dataset_samples AS g
            WHERE g.golden_name = r.dataset_name AND g.golden_version = r.dataset_version
              AND NOT EXISTS (
                  SELECT 1 FROM offline_replay_tasks AS t
                  WHERE t.replay_id = r.replay_id AND t.sample_id = g.sample_id
                    AND t.seed = s.seed AND t.loss IS NOT NULL)),
           '[]'::jsonb) AS missing
FROM offline_replays AS r
WHERE r.status = 'complete'
  AND (SELECT count(*) FROM offline_replay_tasks AS t
       WHERE t.replay_id = r.replay_id AND t.loss IS NOT NULL) < r.task_count;

UPDATE offline_replays AS r
SET status = 'incomplete', missing_tasks = c.missing, verdict = NULL, per_seed = NULL,
    mean_crl = NULL, std_crl = NULL, stability = NULL, runs = NULL, result_hash = NULL
FROM cut_short AS c
WHERE r.replay_id = c.replay_id;

UPDATE offline_replays SET verdict = NULL
WHERE control_replay_id IN (SELECT replay_id FROM cut_short) AND verdict IS NOT NULL;
