-- Dead letters counted by the record refused, not by the letter.
--
-- Two workers of different app ids (consumer groups) that both run a stage
-- each refuse a bad record, and each writes its own letter (event ids differ),
-- so the console and /api/dead-letters counted one bad input twice. A letter
-- names where the refused record was read (topic, partition, offset): the
-- groups count those once. Every letter stays in the table.
CREATE OR REPLACE VIEW v_dead_letters_by_reason AS
SELECT stage, error_type,
       regexp_replace(reason, 'line [0-9]+ column [0-9]+', 'line … column …', 'g') AS reason,
       count(DISTINCT (topic, partition, "offset")) AS letters,
       count(DISTINCT doer) AS doers,
       min(occurred_at) AS first_at,
       max(occurred_at) AS latest_at
FROM dead_letters
GROUP BY 1, 2, 3;

CREATE OR REPLACE VIEW v_dead_letters_by_stage AS
SELECT stage, count(DISTINCT (topic, partition, "offset")) AS letters,
       count(DISTINCT regexp_replace(reason, 'line [0-9]+ column [0-9]+', 'line … column …', 'g'))
           AS reasons,
       max(occurred_at) AS latest_at
FROM dead_letters
GROUP BY stage;
