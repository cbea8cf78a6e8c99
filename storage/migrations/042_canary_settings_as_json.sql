-- A deployment's canary settings as a JSON object, not a JSON string holding one.
--
-- The policy store encoded the settings to text before handing them to a pool
-- whose jsonb codec encodes them again, so every shadow_deployments.canary was a
-- JSON string (jsonb_typeof 'string'): the readers in Python decoded it twice,
-- but SQL saw no fields (canary->>'min_sample_size' was NULL). Found 2026-12-07
-- when a test read a canary's settings back. New rows are objects; this mends
-- the old ones. The deployment-step trigger allows it (no doer, steps, approval
-- rule or step changes).
UPDATE shadow_deployments
SET canary = (canary #>> '{}')::jsonb
WHERE jsonb_typeof(canary) = 'string';
