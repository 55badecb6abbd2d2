"""WebSockets through the gateway: a thin transport around the decision core.

An upgrade on a route with `websocket: true` is decided like any GET (transport.py); once both sides are open, the
relay (relay.py) moves messages both ways while the lifetime watch (lifetime.py) re-decides through the same core
and cache, and ends the socket when the token expires or is revoked, the roles or the route go, or it idles. The
hub (hub.py) holds the app's open sockets: the upstream session, the gauge, and the close at shutdown.
"""

from gateway.forward.websocket.hub import WEBSOCKETS, WebSocketHub
from gateway.forward.websocket.transport import handle_websocket, wants_websocket

__all__ = ["WEBSOCKETS", "WebSocketHub", "handle_websocket", "wants_websocket"]
