"""``python -m jangteo`` is the ``jangteo`` command."""

from jangteo.cli import main

main()
