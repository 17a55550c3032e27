"""Policy engines of the gateway: egress (where a connection may point), rate
limits, tool allow/deny lists.

Each module is pure or nearly so (no store, no ASGI): the gateway and the
service layer call them. Nothing here imports anything higher than
``igris_mw._errors``.
"""
