-- The bandit stage's allocations, kept for the console (issue 20): what each doer's
-- Router is told, and how the shares moved.
--
-- learning.bandit-allocations is compacted: it keeps each doer's latest record only,
-- and the console reads PostgreSQL, not Kafka. The bandit stage stores every record
-- it sends here first. A record is a doer's allocation number (`sequence`, which only
-- rises) and whether an operator froze it; a freeze or an unfreeze sends the same
-- sequence again with the other flag, and a restart may send a record again: the
-- same key, so the row stays one: `last_sent_at` moves and it holds what was sent
-- last. In force is the doer's highest sequence, sent last (a doer's sequence only
-- rises; a freeze keeps it). The stage deletes rows older than its retention, never
-- a doer's latest.
CREATE TABLE bandit_allocations (
    doer text NOT NULL,
    sequence integer NOT NULL CHECK (sequence >= 0),
    frozen boolean NOT NULL,
    -- The record's `allocations`: one object per phase and parameter
    -- (models.bandit.ParameterAllocation as JSON).
    allocations jsonb NOT NULL CHECK (jsonb_typeof(allocations) = 'array'),
    first_sent_at timestamptz NOT NULL DEFAULT now(),
    last_sent_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (doer, sequence, frozen)
);
CREATE INDEX bandit_allocations_first_sent ON bandit_allocations (first_sent_at);

-- Each doer's allocations in force (its highest sequence, sent last), one row per phase
-- and parameter.
CREATE VIEW v_bandit_in_force AS
WITH latest AS (
    SELECT DISTINCT ON (doer) doer, sequence, frozen, allocations, last_sent_at
    FROM bandit_allocations
    ORDER BY doer, sequence DESC, last_sent_at DESC
)
SELECT l.doer, l.sequence AS doer_sequence, l.frozen, l.last_sent_at AS sent_at,
       p->>'phase' AS phase, p->>'parameter' AS parameter,
       p->>'policy_id' AS policy_id, (p->>'policy_version')::int AS policy_version,
       (p->>'sequence')::int AS sequence, COALESCE((p->>'runs')::int, 0) AS runs,
       p->'shares' AS shares, COALESCE(p->'probes', '[]'::jsonb) AS probes,
       COALESCE((p->>'probe_share')::float8, 0) AS probe_share
FROM latest l, jsonb_array_elements(l.allocations) AS p;

-- Every allocation of a phase and parameter, when it was first sent: the shares over
-- time. A doer's record carries all its parameters, so a parameter's allocation
-- (its own sequence) is in every record until its next one: the first is kept.
CREATE VIEW v_bandit_history AS
SELECT DISTINCT ON (b.doer, p->>'phase', p->>'parameter', p->>'policy_id',
                    (p->>'policy_version')::int, (p->>'sequence')::int)
       b.doer, p->>'phase' AS phase, p->>'parameter' AS parameter,
       p->>'policy_id' AS policy_id, (p->>'policy_version')::int AS policy_version,
       (p->>'sequence')::int AS sequence, COALESCE((p->>'runs')::int, 0) AS runs,
       p->'shares' AS shares, b.first_sent_at AS sent_at
FROM bandit_allocations b, jsonb_array_elements(b.allocations) AS p
ORDER BY b.doer, p->>'phase', p->>'parameter', p->>'policy_id',
         (p->>'policy_version')::int, (p->>'sequence')::int, b.first_sent_at;
