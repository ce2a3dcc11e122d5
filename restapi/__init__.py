"""What every app's REST API shares: the one error shape (errors), cursor pagination, strict
serializers, the team-scoped viewsets every team-owned endpoint inherits (viewsets), and the
endpoints that answer as a stream or as REST (async_views)."""
