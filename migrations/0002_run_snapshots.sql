-- Metrics and health of each process that ran services, so that
-- `underwrite metrics` and `underwrite health` can report on runs that have
-- ended or run in another process.
CREATE TABLE run_snapshots (
    run_id     TEXT PRIMARY KEY,         -- UUIDv7 of the process's runtime
    command    TEXT NOT NULL,            -- run | serve | ...
    pid        INTEGER NOT NULL,
    started_ms INTEGER NOT NULL,         -- Unix time, milliseconds
    updated_ms INTEGER NOT NULL,
    metrics    TEXT NOT NULL,            -- JSON: counters and timers
    health     TEXT NOT NULL             -- JSON: circuits and supervisors
);
