"""Running a stack: child processes, health probes, per-service state machines, the supervisor."""
