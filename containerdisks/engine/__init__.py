"""The engine: planning and syncing entries, the results file, and (later) the scheduler."""
