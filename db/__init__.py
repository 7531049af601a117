"""PostgreSQL: numbered migrations, their runner, the pool, and the queries per area."""
