"""The admin side: the JSON API, live events and the dashboard, with its templates and assets."""
