"""What every benchmark shares: processes, databases, readiness, statistics, results.

``processes``: the servers a benchmark starts and stops; ``stack``: the services, fresh
databases, jangteo instances and HTTP readiness; ``stats``: the one percentile
definition; ``results``: the typed result records (with the machine and versions) and
where they are written; ``tools``: wrk and pgbench; ``cpu``: the cores each group of
processes used; ``report``: the table of targets built from the results.
"""
