"""CLI command groups, one module per app; each exposes ``register(app)``."""
