"""``python -m server`` is the ``jangteo`` command."""

from server.cli import main

main()
