"""The web admin console: Django's admin site with the dashboard pages (usage, queues, models)."""
