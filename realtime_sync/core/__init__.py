"""The sans-I/O core: pure, synchronous logic with no event loop, socket, gRPC or Dapr.

Everything here is fed values and returns values, so it is unit-tested without I/O. The
shells around it (subscriber, WebSocket server, state client, CLI) only translate.
"""
