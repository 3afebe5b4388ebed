"""The dinoseek HTTP service: app factory, routes, micro-batching, admission, limits, metrics,
the client of a running service, and the ``serve`` command."""
