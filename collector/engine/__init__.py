"""The campaign engine, pure (no I/O, no clock): an event in; state, decisions, webhooks out."""
