"""The HTTP layer: request schemas, thin routes, SSE framing and error bodies."""
