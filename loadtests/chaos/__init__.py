"""The chaos run (``make chaos``): a seeded, randomized fault schedule under load.

One job per module: ``proxy`` (a TCP link that can be cut or slowed), ``cluster`` (the
services and three instances, each behind its own proxies), ``schedule`` (the faults, a
pure function of seed and duration), ``nemesis`` (applies them and keeps the history),
``traffic`` (the market and its writers), ``watchers`` (subscribers that drop and
resume), ``stall`` (how long committed events waited), ``run`` (one run, start to
verdict) and ``__main__`` (the command).
"""
