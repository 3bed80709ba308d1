"""Where events come in: the ASGI ingest app, Segment message decoding, the served tag."""
