-- Moves of an app id's table state to a new app id by `learnops topics repartition`.
--
-- The command records a move before it changes anything and marks it finished once the
-- new consumer group has its offsets. A worker refuses to start under an app id whose
-- move has not finished: it would read every topic from its start with part of the
-- state, and the move could then not be finished.
CREATE TABLE repartitions (
    to_app_id      text PRIMARY KEY,
    from_app_id    text        NOT NULL,
    old_partitions integer     NOT NULL CHECK (old_partitions > 0),
    new_partitions integer     NOT NULL CHECK (new_partitions > old_partitions),
    started_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz
);
