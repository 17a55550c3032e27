"""Shared test configuration: bounded hypothesis profiles.

``HYPOTHESIS_PROFILE=thorough`` runs many more examples locally.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("ci", parent=settings.get_profile("default"), derandomize=True)
settings.register_profile("thorough", max_examples=2000, deadline=None)
# The suite's upstreams listen on loopback, which the egress policy refuses by
# default: allowed here explicitly, the way an operator allows an internal MCP
# server. Tests of the policy itself pass their own allow_upstream_networks.
os.environ.setdefault("IGRIS_ALLOW_UPSTREAM_NETWORKS", "127.0.0.0/8,::1/128")

settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default")
)
