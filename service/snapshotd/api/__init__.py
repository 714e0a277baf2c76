"""The unix socket API: protocol codec, op handlers, server and client library."""
