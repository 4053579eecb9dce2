"""Webhook tokens, the callback store and the receiver app."""
