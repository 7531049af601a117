"""The composition root: the ``jangteo`` command, and the app that wires the server's HTTP
API (``server``) and the realtime path (``realtime``) together over their resources."""
