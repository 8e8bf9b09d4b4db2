"""Reference storage adapters: memory (the reference), SQLite (embedded default), PostgreSQL (scale-out)."""
