"""``edgelut serve``: an OpenAI-compatible HTTP server over one model.

app.py (routes and responses), protocol.py (request checking), scheduler.py
(the FIFO queue and cancellation), grammar.py (constrained decoding),
tools.py (function calling), errors.py (OpenAI-style errors).
"""

from edgelut.server.app import Server, ServerConfig, create_app

__all__ = ["Server", "ServerConfig", "create_app"]
