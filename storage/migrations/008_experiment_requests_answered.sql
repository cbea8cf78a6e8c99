-- An experiment answers the experiment request a learning trigger raised.
-- See docs/experiments.md ("Answering an experiment request").
--
-- experiments.request_id names the request an experiment was created for; the
-- experiments stage sets it and closes the request (status 'closed',
-- experiment_id, closed_reason) in the transaction that creates the
-- experiment. Several experiments may cite one request; the first closes it.
ALTER TABLE experiments
    ADD COLUMN request_id uuid REFERENCES experiment_requests (request_id);

CREATE INDEX experiments_request ON experiments (request_id) WHERE request_id IS NOT NULL;
