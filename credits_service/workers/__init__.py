"""Background work, each safe when several replicas run it at once."""
