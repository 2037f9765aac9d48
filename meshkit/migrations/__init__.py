"""Alembic migrations. `env.py` is shared by every service; `versions/` holds the meshkit branch
(outbox, inbox, probe tables) that every service database carries; each service adds its own branch
under `services/<name>/migrations/versions`, depending on this one."""
