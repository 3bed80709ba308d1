"""Memory mode: every part of the collector's state in this process, kept in a data directory."""
