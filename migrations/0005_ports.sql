-- The ports shared with the AWS backend (shared/runtime/src/ports.rs):
-- in-progress idempotency leases, write-once objects, and message
-- attributes kept through dead-lettering and replay.

-- A lease on (service, event id) while a consumer handles the event; the
-- completed record goes to `idempotency` and the lease row is deleted in the
-- same transaction. Expiry is decided from expires_ms.
CREATE TABLE idempotency_leases (
    service    TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    token      TEXT NOT NULL,            -- unique to one claim
    expires_ms INTEGER NOT NULL,         -- Unix time, milliseconds
    PRIMARY KEY (service, event_id)
) WITHOUT ROWID;

-- Write-once objects: claim-checked message bodies and other blobs, the
-- embedded counterpart of the S3 bucket.
CREATE TABLE objects (
    key        TEXT PRIMARY KEY,
    body       BLOB NOT NULL,
    created_ms INTEGER NOT NULL
);

-- Message attributes as a JSON object of strings; NULL for messages the
-- embedded driver enqueues itself, whose only attribute is the event id.
ALTER TABLE queue_messages ADD COLUMN attributes TEXT;
ALTER TABLE dead_letters ADD COLUMN attributes TEXT;
