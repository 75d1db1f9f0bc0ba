"""Secure-aggregation benchmark: `python -m bench.secagg [--json] [--quick] [--flower-settings all|headline]`.

For each setting (n nodes, k neighbours, `dropped` nodes vanishing after ShareKeys, i.e. the
costliest case, m coordinates) one full in-memory round runs. Reported: the median over clients
of the masking time (quantize + masks + pack, inside `masked_input`), the server's unmask time
(validating the responses and `finish`), the upload of one masked input, keystream_s: the
time to expand exactly the raw AES-CTR keystream bytes a client's masking consumes (4 bytes
per coordinate for its self mask, for each other member of its U2 and for stochastic
rounding), timed right after each client's masking so both see the same machine load
(median over clients), and mask_efficiency = keystream_s / client_mask_s.
Per-node traffic sums the payload bytes of every message a node sends and receives.
If FEDSA_FLOWER_PYTHON names a Python with `flwr` (see bench/peers/README.md), the same
settings also run through Flower's SecAgg+ code and add flower_* fields; with
`--flower-settings headline` only the two n=50, m=1M settings do (Flower's classic SecAgg at
n=100-200 runs for a very long time), so one run still measures both side by side.
Nodes run without signing credentials here: signatures cost the same in both designs'
real deployments and are outside the masking/unmasking times measured.

Every setting is deterministic given `seed` and always completes. The round nonce comes from
the seed (`bench_nonce`), but the neighbour graph also depends on the nodes' freshly generated
keys (through the session id), so fixing the nonce alone cannot fix the graph. The dropped
nodes are therefore chosen by ring position (`choose_dropped`): the SecAgg+ graph joins ring
positions at fixed distances, so it is the same graph in positions for every session, and a
seeded draw of positions gives the same dropout pattern, up to the names placed on the ring,
in every run. A draw is accepted only if no neighbourhood (a node and its k neighbours) loses
more than k+1-t members, i.e. every node keeps t surviving holders of its shares; otherwise it
is redrawn. A uniformly random set of 10 out of 50 nodes violates that for about one draw in
five at k=11 (t=7), and such a round aborts by design ("only 6 survivors ... threshold 7"),
which measures nothing; the accepted pattern is a uniform draw among the valid ones. Each run
checks the unmasked sum against the survivors' vectors and raises if it is wrong.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedsa_secure.crypto import expand_keystreams, random_bytes, sha256
from fedsa_secure.secagg.client import SecAggClient
from fedsa_secure.secagg.graph import neighbours, ring_order
from fedsa_secure.secagg.messages import QuantizationSpec, RoundConfig, payload_bytes
from fedsa_secure.secagg.quantize import quantization_step, required_modulus_bits
from fedsa_secure.secagg.server import SecAggServer
from fedsa_secure.secagg.session import session_id

LEVEL_BITS, CLIP = 16, 0.5
MAX_DROPOUT_DRAWS = 100_000  # valid patterns are rare only for tiny, heavily dropped settings
FLOWER_HELPER = Path(__file__).parent / "peers" / "flower_secaggplus.py"


def plus_degree(n: int) -> int:
    """k about 3 log2 n, made feasible: at most n-1, and even when n is odd."""
    k = min(n - 1, round(3 * math.log2(n)))
    return k - 1 if (k % 2 and n % 2) else k


def settings(quick: bool) -> list[tuple[int, int, int, int]]:
    """(n, k, dropped, m) grid."""
    if quick:
        return [(5, 4, 1, 1000), (6, 3, 1, 1000)]
    grid = [(50, 11, 10, 1_000_000), (50, 49, 10, 1_000_000)]
    for n in (10, 25, 50, 100, 200):  # SecAgg vs SecAgg+ scaling at m = 100k, 10% dropped
        for k in sorted({n - 1, plus_degree(n)}):
            grid.append((n, k, n // 10, 100_000))
    return grid


def threshold(k: int) -> int:
    """Smallest t with 2t > k+1: tolerates the most dropouts per neighbourhood."""
    return (k + 1) // 2 + 1


def bench_nonce(seed: int) -> bytes:
    """The round nonce of a bench run with this seed (benchmark rounds only: a real round's nonce is fresh)."""
    return sha256(b"fedsa-secure/bench/secagg-nonce" + seed.to_bytes(8, "big", signed=True))


def choose_dropped(
    ring: tuple[str, ...], graph: dict[str, frozenset[str]], t: int, dropped: int, rng: np.random.Generator
) -> frozenset[str]:
    """`dropped` nodes, drawn uniformly by ring position and redrawn until every neighbourhood
    (a node and its graph neighbours) keeps at least t members; ValueError if no draw does.

    Whether a draw is valid depends only on the positions, as the graph is the same in ring
    positions for every session, so a given `rng` state always yields the same pattern.
    """
    if dropped > len(ring) - t:
        raise ValueError(f"dropping {dropped} of {len(ring)} nodes leaves fewer than t={t}")
    for _ in range(MAX_DROPOUT_DRAWS):
        gone = frozenset(ring[position] for position in rng.choice(len(ring), size=dropped, replace=False))
        if all(len((graph[node] | {node}) - gone) >= t for node in ring):
            return gone
    raise ValueError(
        f"found no way to drop {dropped} of {len(ring)} nodes that leaves every neighbourhood "
        f"t={t} members in {MAX_DROPOUT_DRAWS} draws"
    )


def run_setting(n: int, k: int, dropped: int, m: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    names = tuple(f"node{i:03d}" for i in range(n))
    config = RoundConfig(
        round=1, participants=names, threshold=threshold(k), vector_length=m,
        quantization=QuantizationSpec(CLIP, LEVEL_BITS), modulus_bits=required_modulus_bits(n, LEVEL_BITS),
        nonce=bench_nonce(seed), degree=0 if k == n - 1 else k,
    )
    server = SecAggServer(config)
    clients = {name: SecAggClient(name, config) for name in names}
    traffic = {name: 0 for name in names}
    for name, client in clients.items():
        ad = client.advertise()
        traffic[name] += payload_bytes(ad)
        server.receive_advertise(ad)
    roster = server.roster()
    for name, client in clients.items():
        shares = client.share_keys(roster)
        traffic[name] += payload_bytes(roster) + payload_bytes(shares)
        server.receive_shares(shares)
    deliveries = server.deliveries()
    session = session_id(config, roster.advertisements)
    gone = choose_dropped(ring_order(config, session), neighbours(config, session), config.threshold, dropped, rng)
    vector = rng.uniform(-CLIP, CLIP, m).astype(np.float32)  # what a node hands to masking
    times: list[float] = []
    keystreams: list[float] = []
    upload = 0
    for name in names:
        if name in gone:
            continue
        start = time.perf_counter()
        masked = clients[name].masked_input(deliveries[name], vector)
        times.append(time.perf_counter() - start)
        keystreams.append(_timed(expand_keystreams, [random_bytes(32) for _ in range(mask_streams(clients[name]))], m))
        upload = len(masked.packed)
        traffic[name] += payload_bytes(deliveries[name]) + payload_bytes(masked)
        server.receive_masked(masked)
    check = server.consistency_request()
    for name in check.survivors:
        server.receive_consistency(clients[name].consistency_check(check))
    request = server.unmask_request()
    responses = [clients[name].unmask(request) for name in request.survivors]
    start = time.perf_counter()
    for response in responses:
        server.receive_unmask(response)
    total = server.finish()
    server_unmask = time.perf_counter() - start
    _check_sum(total, vector, request.survivors, frozenset(names) - gone)
    for response in responses:
        traffic[response.sender] += payload_bytes(request) + payload_bytes(response)
    client_mask, keystream = statistics.median(times), statistics.median(keystreams)
    survivors_traffic = [traffic[name] for name in request.survivors]
    return {
        "n": n, "k": k, "t": config.threshold, "dropped": dropped, "m": m, "b": config.modulus_bits,
        "client_mask_s": round(client_mask, 4), "server_unmask_s": round(server_unmask, 4),
        "upload_bytes": upload, "upload_bound_bytes": math.ceil(1.05 * m * config.modulus_bits / 8),
        "keystream_s": round(keystream, 4), "mask_efficiency": round(keystream / client_mask, 3),
        "node_traffic_bytes": int(statistics.median(survivors_traffic)),
    }


HEADLINE = [(50, 11, 10, 1_000_000), (50, 49, 10, 1_000_000)]  # the two m = 1M settings


def mask_streams(client: SecAggClient) -> int:
    """Keystreams one masked input expands: the self mask, a pairwise mask for every other
    member of the client's U2 (which includes itself), and the stochastic-rounding stream."""
    return 1 + (len(client.u2) - 1) + 1


def _check_sum(total: np.ndarray, vector: np.ndarray, survivors: tuple[str, ...], expected: frozenset[str]) -> None:
    """RuntimeError unless every node that stayed is a survivor and the sum is that of their
    vectors (all equal to `vector`) to within one quantization step per survivor."""
    count = len(survivors)
    error = float(np.max(np.abs(total - count * vector)))
    if set(survivors) != expected or error >= count * quantization_step(QuantizationSpec(CLIP, LEVEL_BITS)):
        raise RuntimeError(f"bench round went wrong: {count} survivors (expected {len(expected)}), sum error {error}")


def _timed(function: Any, *args: Any) -> float:
    """Seconds one call takes."""
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def flower_results(grid: list[tuple[int, int, int, int]]) -> dict[tuple[int, int, int, int], dict[str, Any]] | None:
    """Run settings through Flower's SecAgg+ in FEDSA_FLOWER_PYTHON (keyed by setting), or None if unavailable."""
    python = os.environ.get("FEDSA_FLOWER_PYTHON")
    if not python:
        return None
    lines = "".join(
        json.dumps({"n": n, "k": k, "t": threshold(k), "dropped": d, "m": m}) + "\n" for n, k, d, m in grid
    )
    done = subprocess.run([python, str(FLOWER_HELPER)], input=lines, capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return dict(zip(grid, rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--quick", action="store_true", help="a tiny grid (seconds)")
    parser.add_argument(
        "--flower-settings", choices=("all", "headline"), default="all",
        help="run Flower on every setting, or only the two n=50, m=1M headline settings "
        "(Flower's classic SecAgg at n=100-200 takes very long)",
    )
    args = parser.parse_args(argv)
    grid = settings(args.quick)
    rows = [run_setting(*setting) for setting in grid]
    compared = [s for s in grid if args.flower_settings == "all" or s in HEADLINE]
    flower = flower_results(compared)
    if flower is not None:
        for row, setting in zip(rows, grid):
            extra = flower.get(setting)
            if extra is None:
                continue
            if "flower_error" in extra:
                row["flower_error"] = extra["flower_error"]
                continue
            row.update({key: extra[key] for key in ("flower_client_mask_s", "flower_server_unmask_s", "flower_upload_bytes")})
            row["flower_num_shares"] = extra["flower_num_shares"]
            row["unmask_speedup"] = round(row["flower_server_unmask_s"] / row["server_unmask_s"], 1)
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    columns = list(rows[0])
    print(" ".join(f"{c:>14}" for c in columns))
    for row in rows:
        print(" ".join(f"{row.get(c, ''):>14}" for c in columns))


if __name__ == "__main__":
    main(sys.argv[1:])
