"""The embedded runtime of `make run`: the embedded PostgreSQL and Redis (embedded), and the
supervisor that starts, watches and stops every process of the platform (supervisor)."""
