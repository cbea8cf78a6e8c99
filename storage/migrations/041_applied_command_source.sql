-- Where each applied command was read: its topic, partition and offset.
--
-- A stage records a command as applied after its effect and before its offset is
-- committed, so a worker that stops or loses the partition between the two reads
-- the same record again. That re-read is a redelivery, not a replay: the same
-- record at the same place. Without the place, the replay guard refused it as a
-- replay (a `command_refused` alert, logged as a warning) after an ordinary
-- restart. Rows recorded before this migration have none (NULL), and a re-read of
-- such a command is still refused as a replay.
ALTER TABLE applied_commands
    ADD COLUMN source_topic text,
    ADD COLUMN source_partition integer,
    ADD COLUMN source_offset bigint;
