"""OAuth 2 client code for upstream credentials: discovery, token requests, caches, consent.

Pure client logic with no import of the gateway, the service or a store: the
gateway's resolver and the service build on it.
"""
