"""What a newcomer runs around the collector: the demo, the request bin, offline replay."""
