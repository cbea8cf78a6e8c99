-- Two corrections to migrations 031 and 032.
--
-- 031 reopened the replays the old task naming had cut short (incomplete, their
-- missing pairs listed with task_id null) under the attempt they had, so the
-- verdicts given to them again were taken for repeats of the comparisons
-- recorded on that attempt (replay_comparisons is unique on replay, attempt,
-- control and control attempt; ON CONFLICT DO NOTHING), and an experiment
-- decided on them cited the withdrawn verdict. Here each such replay still
-- without a verdict becomes an attempt of its own (attempt + 1), so the new
-- verdicts are recorded beside the old comparisons. (A database where the timer
-- settled them before this migration keeps what it recorded.)
UPDATE offline_replays SET attempt = attempt + 1
WHERE status = 'incomplete' AND verdict IS NULL
  AND missing_tasks @> '[{"task_id": null}]'::jsonb;

-- 032 made the events' role and time the inserting role's; the key-admin role
-- could still insert a signing key whose created_at, retired_at or revoked_at
-- it chose (a key inserted "retired in 2099" reads as retired yet vouches for
-- new registrations, with no retirement event). A new key is added now, neither
-- retired nor revoked: those come only from events (migration 021's trigger).
CREATE FUNCTION signing_key_added_now() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.created_at := clock_timestamp();
    NEW.retired_at := NULL;
    NEW.revoked_at := NULL;
    RETURN NEW;
END;
$$;

CREATE TRIGGER trigger_signing_key_added_now
    BEFORE INSERT ON signing_keys
    FOR EACH ROW EXECUTE FUNCTION signing_key_added_now();
