"""Webhook delivery: outbox, dispatcher, sender, transport, breaker, signatures, SSRF guard."""
