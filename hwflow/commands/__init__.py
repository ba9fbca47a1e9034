"""CLI command groups: each module has ``register(subparsers)`` and is found automatically."""
