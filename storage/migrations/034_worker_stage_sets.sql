-- The stages each app id (Kafka consumer group) runs, recorded by `learnops worker` at start.
--
-- A consumer group commits one offset per partition, whatever stage read it: two workers
-- of one app id running different stages split a topic's partitions between them, and
-- each commits past the records its own stages took, so the other worker's stages never
-- see them; a stage added to an app id later starts at offsets the others committed. A
-- worker whose stages are not its app id's recorded ones refuses to start unless told
-- (`learnops worker --restage`, once every worker of that app id is stopped).
CREATE TABLE worker_stage_sets (
    app_id text PRIMARY KEY,
    stages text[] NOT NULL,
    host text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
