"""The config file: its typed schema, durations, loading and checking into Settings."""
