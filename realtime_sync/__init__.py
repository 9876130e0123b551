"""realtime-sync: push task changes from a Dapr pub/sub topic to WebSocket clients."""

__version__ = "0.1.0"
