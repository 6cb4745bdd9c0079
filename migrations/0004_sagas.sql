-- Sagas on the embedded runtime: each saga's status, each step's command
-- and answer, and the task tokens that tie a queue message to its step.

CREATE TABLE sagas (
    saga_id    TEXT PRIMARY KEY,         -- the application id for origination
    definition TEXT NOT NULL,            -- the saga's name, such as origination
    status     TEXT NOT NULL,            -- started | completed | compensating | rolled_back
    input      TEXT NOT NULL,            -- the event that started it, JSON
    failed_step TEXT,                    -- the step whose failure started the compensations
    failure    TEXT,                     -- its error code and message
    started_ms INTEGER NOT NULL,         -- Unix time, milliseconds
    updated_ms INTEGER NOT NULL
);
CREATE INDEX sagas_status ON sagas (status, saga_id);

-- One row per step run, forward steps and compensations alike. The task
-- token is the step's idempotency key: the command carries it, and the first
-- answer for it wins.
CREATE TABLE saga_steps (
    task_token  TEXT PRIMARY KEY,        -- <saga id>/<phase>/<step>
    saga_id     TEXT NOT NULL REFERENCES sagas (saga_id),
    phase       TEXT NOT NULL,           -- forward | compensation
    step        TEXT NOT NULL,
    service     TEXT NOT NULL,           -- the queue the command went to
    command_type TEXT NOT NULL,          -- the event type of the command
    command_id  TEXT,                    -- the command event's id, once sent
    command     TEXT,                    -- the command event, JSON, once sent
    status      TEXT NOT NULL,           -- waiting (for a signal) | sent | succeeded | failed
    answer      TEXT,                    -- JSON array of the events the service emitted
    error_code  TEXT,
    error_message TEXT,
    started_ms  INTEGER NOT NULL,
    answered_ms INTEGER
);
CREATE INDEX saga_steps_saga ON saga_steps (saga_id, started_ms);

-- Answers of services to task tokens, written in the transaction that
-- commits the handled command. A second answer for a token is ignored.
CREATE TABLE saga_answers (
    task_token    TEXT PRIMARY KEY,
    outcome       TEXT NOT NULL,         -- success | failure
    outputs       TEXT NOT NULL,         -- JSON array of the events emitted
    error_code    TEXT,
    error_message TEXT,
    answered_ms   INTEGER NOT NULL
);

-- Events a saga waits for from outside, such as the borrower's acceptance.
CREATE TABLE saga_signals (
    saga_id     TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    body        TEXT NOT NULL,           -- the event, JSON
    received_ms INTEGER NOT NULL,
    PRIMARY KEY (saga_id, event_type)
);

ALTER TABLE queue_messages ADD COLUMN task_token TEXT;
ALTER TABLE dead_letters ADD COLUMN task_token TEXT;
