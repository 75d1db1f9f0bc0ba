"""One secure-aggregation round run in memory: real SecAgg client and server objects, no network.

Experiments use it so that a "secure" arm amalgamates exactly what the deployed aggregator would
get from `SecAggServer.finish` (quantized, masked, unmasked, dequantized), and so that its traffic
figures are the sizes of the real protocol messages. Nodes run without signing credentials here,
as in `bench.secagg`: signatures and certificates add a constant per message, not per coordinate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsa_secure.crypto import random_bytes
from fedsa_secure.secagg.client import SecAggClient
from fedsa_secure.secagg.messages import QuantizationSpec, RoundConfig, payload_bytes
from fedsa_secure.secagg.quantize import required_modulus_bits
from fedsa_secure.secagg.server import SecAggServer

MIN_COHORT = 3  # a secure sum over two parties reveals each one's input to the other


@dataclass(frozen=True)
class SecureSum:
    """The unmasked float sum and what the round cost."""

    total: np.ndarray  # float64 sum of the inputs, up to quantization (one step of `spec` per input at most)
    upload_bytes: int  # packed masked vectors, summed over nodes (the part that carries the update)
    protocol_up_bytes: int  # every other node -> aggregator message (keys, shares, signatures, unmask shares)
    protocol_down_bytes: int  # aggregator -> node messages (roster, share deliveries, check and unmask requests)
    node_seconds: dict[str, float]  # client-side protocol time per node


def round_config(round_number: int, names: list[str], length: int, spec: QuantizationSpec) -> RoundConfig:
    """The aggregator's config for one classic SecAgg round over `names` (threshold: a majority, at least 3)."""
    if len(names) < MIN_COHORT:
        raise ValueError(f"a secure sum needs at least {MIN_COHORT} nodes, got {len(names)}: {names}")
    return RoundConfig(
        round=round_number,
        participants=tuple(sorted(names)),
        threshold=max(MIN_COHORT, len(names) // 2 + 1),
        vector_length=length,
        quantization=spec,
        modulus_bits=required_modulus_bits(len(names), spec.level_bits),
        nonce=random_bytes(32),
    )


def secure_sum(inputs: dict[str, np.ndarray], round_number: int, spec: QuantizationSpec) -> SecureSum:
    """Sum the nodes' vectors through every SecAgg stage; no node drops out."""
    names = sorted(inputs)
    lengths = {inputs[n].shape for n in names}
    if len(lengths) != 1 or len(next(iter(lengths))) != 1:
        raise ValueError(f"inputs must be 1-D vectors of one length, got shapes {sorted(lengths)}")
    config = round_config(round_number, names, next(iter(lengths))[0], spec)
    server = SecAggServer(config)
    clients = {n: SecAggClient(n, config) for n in names}
    seconds = dict.fromkeys(names, 0.0)
    up = dict.fromkeys(("upload", "protocol"), 0)
    down = 0

    def on_node(name: str, step: Any, *args: Any) -> Any:
        start = time.perf_counter()
        message = step(*args)
        seconds[name] += time.perf_counter() - start
        return message

    for name in names:
        advert = on_node(name, clients[name].advertise)
        up["protocol"] += payload_bytes(advert)
        server.receive_advertise(advert)
    roster = server.roster()
    for name in names:
        shares = on_node(name, clients[name].share_keys, roster)
        down += payload_bytes(roster)
        up["protocol"] += payload_bytes(shares)
        server.receive_shares(shares)
    for name, delivery in server.deliveries().items():
        masked = on_node(name, clients[name].masked_input, delivery, inputs[name])
        down += payload_bytes(delivery)
        up["upload"] += len(masked.packed)
        up["protocol"] += payload_bytes(masked) - len(masked.packed)
        server.receive_masked(masked)
    for ask, answer, receive in (  # the unmask request exists only once every check response is in
        (server.consistency_request, "consistency_check", server.receive_consistency),
        (server.unmask_request, "unmask", server.receive_unmask),
    ):
        request = ask()
        for name in request.survivors:
            response = on_node(name, getattr(clients[name], answer), request)
            down += payload_bytes(request)
            up["protocol"] += payload_bytes(response)
            receive(response)
    total = server.finish()
    return SecureSum(total, up["upload"], up["protocol"], down, seconds)
