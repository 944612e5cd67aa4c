"""Persistence: tables, migrations and the SQL store (SQLite and PostgreSQL)."""
