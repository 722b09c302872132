"""HTTP doors onto the services: one blueprint per concern, and the webhook as WSGI middleware
in front of Flask (hooks.py says why)."""
