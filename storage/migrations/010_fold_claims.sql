-- Which source record owns each run a stage folds into its streaming aggregates.
--
-- A stage folds a run into a Faust table value only if PostgreSQL says the
-- record in hand is the one that first delivered that run (same partition and
-- offset): a publisher's duplicate of a run, or the CRL stage's re-emission of
-- a result after a restart, arrives at another offset and is not folded again.
-- Each table value carries the highest source offset it has folded, in the same
-- changelog record as the aggregate, so a redelivery after a kill -9 is not
-- folded twice either (docs/operations.md, "Exactly once").

ALTER TABLE crl_results
    ADD COLUMN source_partition integer,
    ADD COLUMN source_offset    bigint;

CREATE TABLE fold_claims (
    consumer         text        NOT NULL,  -- the folding stage: canary-run, canary-routing, skills
    item_id          text        NOT NULL,  -- a run id, or a routing's event id
    source_partition integer     NOT NULL,
    source_offset    bigint      NOT NULL,
    claimed_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, item_id)
);

-- Claims expire with the aggregates they guard (storage.claims.expire_claims).
CREATE INDEX fold_claims_age ON fold_claims (claimed_at);
