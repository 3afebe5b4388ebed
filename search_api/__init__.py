"""The dinoseek HTTP service: FastAPI app factory, routes, micro-batching, limits, metrics."""
