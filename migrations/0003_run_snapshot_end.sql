-- When a process that ran services stopped; NULL while it runs or if it
-- was killed.
ALTER TABLE run_snapshots ADD COLUMN ended_ms INTEGER;
