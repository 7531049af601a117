"""Realtime delivery: WebSocket gateway, channel hub, Redis broker and outbox relay."""
