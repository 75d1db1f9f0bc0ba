"""Secure aggregation (SecAgg, Bonawitz et al. 2017): pure protocol, no gRPC, no torch.

Nodes drive a `SecAggClient`, the aggregator a `SecAggServer`; both exchange the plain
dataclasses of `secagg.messages`. All cryptography comes from `fedsa_secure.crypto`.
"""

from fedsa_secure.secagg.client import SecAggClient
from fedsa_secure.secagg.server import SecAggServer
from fedsa_secure.secagg.stages import Stage

__all__ = ["SecAggClient", "SecAggServer", "Stage"]
