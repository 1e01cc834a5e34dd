"""The connection and its HTTP limits (protocol, middleware, body reading), before any route."""
