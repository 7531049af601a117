"""The embedded stack: PostgreSQL and Redis from Python packages under the data directory."""
