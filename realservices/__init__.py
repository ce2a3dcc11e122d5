"""The real services the tests and the benchmarks run against, in one place: a Xinference serving
the offline models, a Celery worker process on the test database, the offline models registered
on a team, and stopping whole process groups. `tests/` and `bench/` both import from here; neither
imports the other."""
