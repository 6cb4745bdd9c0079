-- Embedded store: key-value state, queues with SQS delivery semantics,
-- dead letters and idempotency records, all in one SQLite file.

-- A rowid table: values are often several KiB, and SQLite stores large rows
-- poorly in WITHOUT ROWID tables.
CREATE TABLE kv (
    key        TEXT NOT NULL UNIQUE,
    value      TEXT NOT NULL,            -- JSON
    version    INTEGER NOT NULL,         -- 1 on insert, +1 on every update
    updated_ms INTEGER NOT NULL          -- Unix time, milliseconds
);

CREATE TABLE queue_messages (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    queue         TEXT NOT NULL,
    message_id    TEXT NOT NULL,         -- the event id
    body          TEXT NOT NULL,         -- the event, JSON
    sent_ms       INTEGER NOT NULL,
    visible_ms    INTEGER NOT NULL,      -- receivable from this time on
    receive_count INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT
);
CREATE INDEX queue_messages_ready ON queue_messages (queue, visible_ms, seq);

CREATE TABLE dead_letters (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    queue         TEXT NOT NULL,         -- the source queue, for replay
    message_id    TEXT NOT NULL,
    body          TEXT NOT NULL,         -- the original message, untouched
    error_kind    TEXT NOT NULL,         -- permanent | retries_exhausted
    error_code    TEXT NOT NULL,
    error_message TEXT NOT NULL,
    receive_count INTEGER NOT NULL,
    sent_ms       INTEGER NOT NULL,
    failed_ms     INTEGER NOT NULL
);
CREATE INDEX dead_letters_queue ON dead_letters (queue, seq);

CREATE TABLE idempotency (
    service      TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    status       TEXT NOT NULL,          -- complete
    outputs      TEXT NOT NULL,          -- JSON array of the events emitted
    completed_ms INTEGER NOT NULL,
    PRIMARY KEY (service, event_id)
) WITHOUT ROWID;
