"""HTTP doors onto the services: one blueprint per concern."""
