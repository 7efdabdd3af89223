"""Use cases: each takes its dependencies (database port, generator, clock, settings) as arguments."""
