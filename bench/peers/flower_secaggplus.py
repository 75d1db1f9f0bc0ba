"""Time Flower 1.41's SecAgg+ on one setting; run under a Python that has `flwr` installed.

Reads one JSON object per line on stdin ({"n", "k", "t", "dropped", "m", "seed"}) and prints
one JSON object per line: flower_client_mask_s, flower_server_unmask_s, flower_upload_bytes.
Clients run Flower's own stage functions from `secaggplus_mod`; the server runs Flower's own
`SecAggPlusWorkflow.unmask_stage` against an in-process grid that returns the clients' real
unmask replies, so the timed code is Flower's, with no network in between. The neighbour
graph is built exactly as `SecAggPlusWorkflow.setup_stage` builds it. This file is not part
of fedsa-secure and never imported by it.
"""

from __future__ import annotations

import importlib
import json
import random
import sys
import time
from types import SimpleNamespace
from typing import Any

import numpy as np

mod = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
from flwr.common import bytes_to_ndarray as to_ndarray
from flwr.common import ndarrays_to_parameters
from flwr.common.secure_aggregation.ndarrays_arithmetic import parameters_addition, parameters_mod
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import SecAggPlusWorkflow, WorkflowState
from flwr.supercore.task_identity import TaskIdentity

CLIP, QRANGE, MODRANGE, MAX_WEIGHT = 8.0, 1 << 22, 1 << 32, 1000.0


class _Reply:
    """The parts of a Flower Message that `unmask_stage` reads."""

    def __init__(self, src: int, configs: dict[str, Any]) -> None:
        self.metadata = SimpleNamespace(src_node_id=src)
        self.content = SimpleNamespace(config_records={RECORD_KEY_CONFIGS: configs})

    def has_error(self) -> bool:
        return False


class _Grid:
    def __init__(self, replies: list[_Reply]) -> None:
        self._replies = replies

    def send_and_receive(self, messages: Any, timeout: Any = None) -> list[_Reply]:
        list(messages)
        return self._replies


def run(n: int, k: int, t: int, dropped: int, m: int, seed: int) -> dict[str, float | int]:
    rng = random.Random(seed)
    num_shares = n if k >= n - 1 else (k + 1 if (k + 1) % 2 else k)
    nids = list(range(1, n + 1))
    rng.shuffle(nids)
    half = num_shares >> 1
    neighbours = {nid: {nids[(i + o) % n] for o in range(-half, half + 1)} for i, nid in enumerate(nids)}
    states = {nid: mod.SecAggPlusState() for nid in nids}
    keys = {}
    for nid, st in states.items():
        st.nid = nid
        setup = {Key.SAMPLE_NUMBER: n, Key.SHARE_NUMBER: num_shares, Key.THRESHOLD: t,
                 Key.CLIPPING_RANGE: CLIP, Key.TARGET_RANGE: QRANGE, Key.MOD_RANGE: MODRANGE,
                 Key.MAX_WEIGHT: MAX_WEIGHT}
        out = mod._setup(st, setup)  # noqa: SLF001 - Flower's own stage function
        keys[nid] = [out[Key.PUBLIC_KEY_1], out[Key.PUBLIC_KEY_2]]
    inbox: dict[int, tuple[list[int], list[bytes]]] = {nid: ([], []) for nid in nids}
    for nid, st in states.items():
        out = mod._share_keys(st, {str(j): tuple(keys[j]) for j in neighbours[nid]})  # noqa: SLF001
        for dst, ct in zip(out[Key.DESTINATION_LIST], out[Key.CIPHERTEXT_LIST]):
            inbox[dst][0].append(nid)
            inbox[dst][1].append(ct)
    dead = set(rng.sample(nids, dropped))
    active = [nid for nid in nids if nid not in dead]
    vector = [np.random.default_rng(seed).uniform(-1, 1, m)]
    total = None
    client_times, upload = [], 0
    for nid in active:
        cfg = {Key.CIPHERTEXT_LIST: inbox[nid][1], Key.SOURCE_LIST: inbox[nid][0]}
        start = time.perf_counter()
        out = mod._collect_masked_vectors(states[nid], cfg, 1, ndarrays_to_parameters(vector))  # noqa: SLF001
        client_times.append(time.perf_counter() - start)
        blobs = out[Key.MASKED_PARAMETERS]
        upload = sum(len(b) for b in blobs)
        arrays = [to_ndarray(b) for b in blobs]
        total = arrays if total is None else parameters_addition(total, arrays)
    assert total is not None
    state = WorkflowState()
    state.sampled_node_ids = set(nids)
    state.active_node_ids = set(active)
    state.nid_to_neighbours = {nid: set(v) for nid, v in neighbours.items()}
    state.nid_to_publickeys = keys
    state.threshold, state.mod_range = t, MODRANGE
    state.clipping_range, state.quantization_range = CLIP, QRANGE
    state.aggregate_ndarrays = parameters_mod(total, MODRANGE)
    replies = []
    for nid in active:
        cfg = {Key.ACTIVE_NODE_ID_LIST: list(neighbours[nid] & set(active)),
               Key.DEAD_NODE_ID_LIST: list(neighbours[nid] & dead)}
        replies.append(_Reply(nid, mod._unmask(states[nid], cfg)))  # noqa: SLF001
    context = SimpleNamespace(
        state=SimpleNamespace(config_records={MAIN_CONFIGS_RECORD: {WorkflowKey.CURRENT_ROUND: 1}}),
        strategy=SimpleNamespace(aggregate_fit=lambda *args: (None, {})),
    )
    workflow = SecAggPlusWorkflow(num_shares, t, clipping_range=CLIP, quantization_range=QRANGE,
                                  modulus_range=MODRANGE, max_weight=MAX_WEIGHT)
    start = time.perf_counter()
    ok = workflow.unmask_stage(_Grid(replies), context, state)  # type: ignore[arg-type]
    server = time.perf_counter() - start
    return {"flower_client_mask_s": float(np.median(client_times)), "flower_server_unmask_s": server,
            "flower_upload_bytes": upload, "flower_num_shares": num_shares, "flower_unmask_ok": bool(ok)}


def main() -> None:
    TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = 1  # what a Flower run would set
    for line in sys.stdin:
        if line.strip():
            s = json.loads(line)
            try:
                result: dict[str, Any] = run(s["n"], s["k"], s["t"], s["dropped"], s["m"], s.get("seed", 0))
            except Exception as exc:  # noqa: BLE001 - report Flower's refusal, keep benchmarking
                result = {"flower_error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
