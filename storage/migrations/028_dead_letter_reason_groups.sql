-- Dead letters grouped by their cause, not by where in the record it was found.
--
-- A JSON parse error names its position ("… at line 1 column 40"), so one
-- cause (truncated JSON, say) split into a row per column in the console and
-- /api/dead-letters. Each letter keeps its exact reason; the groups fold the
-- position to "line … column …".
CREATE OR REPLACE VIEW v_dead_letters_by_reason AS
SELECT stage, error_type,
       regexp_replace(reason, 'line [0-9]+ column [0-9]+', 'line … column …', 'g') AS reason,
       count(*) AS letters,
       count(DISTINCT doer) AS doers,
       min(occurred_at) AS first_at,
       max(occurred_at) AS latest_at
FROM dead_letters
GROUP BY 1, 2, 3;

CREATE OR REPLACE VIEW v_dead_letters_by_stage AS
SELECT stage, count(*) AS letters,
       count(DISTINCT regexp_replace(reason, 'line [0-9]+ column [0-9]+', 'line … column …', 'g'))
           AS reasons,
       max(occurred_at) AS latest_at
FROM dead_letters
GROUP BY stage;
