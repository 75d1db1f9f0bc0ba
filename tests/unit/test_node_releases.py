"""Every message a node can send comes from a DP release, from what the aggregator sent, or from the ledger.

Two nodes hold neighbouring record sets, D and D' (one record replaced), the same DP teacher and
ledger, and the same randomness for their DP noise and their secure-aggregation keys. Walked through
every kind of message a node sends, they must send the same bytes, except for the one DP-SGD
release per round: that one must be exactly what the DP mechanism outputs on the node's records
(recomputed here independently), masked with keys that do not depend on the records. ECDSA
signatures are randomised, so they are checked for validity instead of compared. A message that
carried any other statistic of the records (a loss, a count of labels, a hash of the data) would
differ between D and D' and fail here.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedsa_secure import messages as msg
from fedsa_secure.checks import check_records
from fedsa_secure.config import DataSection, NodeConfig, NodeSection, PrivacySection, TlsConfig
from fedsa_secure.crypto import FixedRandomness, TrustAnchor, pki
from fedsa_secure.data import LabelledSet, NodeData, aggregator_data, node_data
from fedsa_secure.fedsa.distill import DPDistiller
from fedsa_secure.fedsa.output_kd import OutputObjective, fit_output_map
from fedsa_secure.fedsa.saliency import gradcam_maps
from fedsa_secure.models import architecture_digest, backbone_state, flatten_state, make_student, round_context, state_digest
from fedsa_secure.node import Node
from fedsa_secure.privacy.state import FINGERPRINT_CHARS, KEY_FILE, records_fingerprint
from fedsa_secure.secagg import messages as sa
from fedsa_secure.secagg.client import SecAggClient
from fedsa_secure.secagg.identity import Credentials, survivors_payload, verify_advertisement
from fedsa_secure.secagg.quantize import required_modulus_bits
from fedsa_secure.secagg.server import SecAggServer
from fedsa_secure.transport.serde import encode_client

torch.set_num_threads(1)

NAME, PEERS = "node-1", ("node-2", "node-3")
SEED = 7  # the mechanism seed both nodes share (a test-only switch: deployed nodes draw fresh noise)
SPEC = sa.QuantizationSpec(1.0, 16)
RELEASED = ("features", "head")

CNN = msg.StudentArchitecture("cnn", 10, architecture_digest("cnn", 10))  # the student the aggregator names


@dataclasses.dataclass(frozen=True)
class Setting:
    root: Path
    ca: Path
    certs: dict[str, tuple[Path, Path]]
    records: dict[str, NodeData]  # "D" and "D'": neighbours
    probe: LabelledSet


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory) -> Setting:
    root = tmp_path_factory.mktemp("releases")
    ca, ca_key = pki.create_ca(root / "keys")
    certs = {name: pki.issue_certificate(ca, ca_key, name, root / "keys") for name in (NAME, *PEERS)}
    d = node_data(NAME, 0)
    x, y = d.train.x.copy(), d.train.y.copy()
    x[0], y[0] = x[1][:, ::-1], (y[0] + 1) % d.train.num_classes  # replace one record: mirrored image, another label
    neighbour = NodeData(d.name, d.task, LabelledSet(x, y, d.train.num_classes))
    records = {"D": d, "D'": neighbour}
    # One DP teacher and its ledger, as if both record sets had produced the same release.
    Node.from_config(config(root, ca, certs, "D"), data=d, mechanism_seed=SEED)
    key = (root / "D" / KEY_FILE).read_bytes()
    shutil.copytree(root / "D", root / "D'")
    fingerprints = {k: records_fingerprint(key, v.train)[:FINGERPRINT_CHARS] for k, v in records.items()}
    (root / "D'" / fingerprints["D"]).rename(root / "D'" / fingerprints["D'"])
    return Setting(root, ca, certs, records, aggregator_data(0)[0])


def config(root: Path, ca: Path, certs: dict[str, tuple[Path, Path]], which: str) -> NodeConfig:
    cert, key = certs[NAME]
    return NodeConfig(NodeSection(name=NAME, aggregator="127.0.0.1:1", state_dir=root / which), TlsConfig(ca, cert, key),
                      DataSection(dataset="digits", seed=0), PrivacySection(planned_rounds=2, local_epochs=1))


def node(setting: Setting, which: str) -> Node:
    """A node on `which` records; both start from the same ledger and teacher, with the same randomness."""
    return Node.from_config(config(setting.root, setting.ca, setting.certs, which), data=setting.records[which],
                mechanism_seed=SEED, randomness=FixedRandomness(b"secagg-keys".ljust(32, b".")))


def peer(setting: Setting, name: str, round_config: sa.RoundConfig) -> SecAggClient:
    cert, key = setting.certs[name]
    credentials = Credentials.from_pem(setting.ca.read_bytes(), cert.read_bytes(), key.read_bytes())
    return SecAggClient(name, round_config, credentials, FixedRandomness(name.encode().ljust(32, b".")))


def wire(message: msg.ClientMessage) -> bytes:
    return encode_client(message)


def without_signatures(message: Any) -> Any:
    """The message with its ECDSA signatures blanked (they are randomised; their validity is checked apart)."""
    return dataclasses.replace(message, signature=b"") if hasattr(message, "signature") else message


def status_fields(status: msg.PrivacyStatus) -> dict[str, Any]:
    """Every field but the ledger head, a hash over entries that carry the time they were written."""
    return {k: v for k, v in dataclasses.asdict(status).items() if k != "ledger_head"}


STUDENT = backbone_state(make_student(10, 0), RELEASED)


def round_config(number: int) -> sa.RoundConfig:
    participants = tuple(sorted((NAME, *PEERS)))
    return sa.RoundConfig(number, participants, 3, int(flatten_state(STUDENT).size), SPEC,
                          required_modulus_bits(3, SPEC.level_bits), bytes(range(32)),
                          context=round_context(CNN.digest, state_digest(STUDENT)))


def walk(setting: Setting, which: str) -> dict[str, Any]:
    """Every message kind the node sends, in the order a fedsa+ run asks for them."""
    n, probe, sent = node(setting, which), setting.probe, {}
    sent["Join"] = n.join()
    sent["SelectReply"], sent["PrivacyStatus"] = n.handle(msg.OutputSelectRequest(1, probe.x, probe.y, probe.num_classes, CNN))
    (sent["Abort"],) = n.handle(msg.OutputSelectRequest(1, probe.x, probe.y, probe.num_classes, CNN))  # a second one
    config = round_config(2)
    (sent["AdvertiseKeys"],) = n.handle(msg.TrainRequest(2, STUDENT, config))
    peers = {name: peer(setting, name, config) for name in PEERS}
    server = SecAggServer(config, TrustAnchor(setting.ca.read_bytes()))
    for advert in (sent["AdvertiseKeys"], *(p.advertise() for p in peers.values())):
        server.receive_advertise(advert)
    roster = server.roster()
    (sent["ShareKeys"],) = n.handle(roster)
    server.receive_shares(sent["ShareKeys"])
    for p in peers.values():
        server.receive_shares(p.share_keys(roster))
    deliveries = server.deliveries()
    sent["delivery"] = deliveries[NAME]
    (sent["MaskedInput"],) = n.handle(deliveries[NAME])
    server.receive_masked(sent["MaskedInput"])
    for p in peers.values():
        server.receive_masked(p.masked_input(deliveries[p.name], np.zeros(config.vector_length, np.float32)))
    request = server.consistency_request()
    (sent["ConsistencyCheckResponse"],) = n.handle(request)
    sent["session"] = n._client()._session  # to check the survivor signature against
    for p in peers.values():
        server.receive_consistency(p.consistency_check(request))
    server.receive_consistency(sent["ConsistencyCheckResponse"])
    unmask = server.unmask_request()
    sent["UnmaskResponse"], sent["status after round"] = n.handle(unmask)
    server.receive_unmask(sent["UnmaskResponse"])
    for p in peers.values():
        server.receive_unmask(p.unmask(unmask))
    sent["sum"] = server.finish()  # the peers added zeros: the sum is this node's release, quantized
    (sent["AdvertiseKeys round 3"],) = n.handle(msg.TrainRequest(3, STUDENT, round_config(3)))  # the second planned round
    (sent["Decline"],) = n.handle(msg.TrainRequest(4, STUDENT, round_config(4)))  # budget spent: teacher + 2 rounds
    sent["ledger"] = n.state.ledger.entries
    sent["roster"] = roster
    return sent


@pytest.fixture(scope="module")
def walks(setting: Setting) -> dict[str, dict[str, Any]]:
    return {which: walk(setting, which) for which in ("D", "D'")}


def test_the_walk_covers_every_message_a_node_can_send(walks):
    kinds = {type(m) for m in walks["D"].values() if type(m) in msg.ClientMessage.__args__}  # type: ignore[attr-defined]
    assert kinds == set(msg.ClientMessage.__args__)  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["Join", "SelectReply", "Abort", "Decline"])
def test_messages_that_are_not_dp_releases_are_the_same_bytes_on_neighbouring_records(walks, kind):
    d, neighbour = walks["D"][kind], walks["D'"][kind]
    assert wire(d) == wire(neighbour), (d, neighbour)


def test_privacy_statuses_say_the_same_on_neighbouring_records(walks):
    for key in ("PrivacyStatus", "status after round"):
        assert status_fields(walks["D"][key]) == status_fields(walks["D'"][key])
    assert walks["D"]["Join"].status.epsilon == walks["D"]["ledger"][0]["epsilon"] > 0  # the teacher, from the start
    assert walks["D"]["status after round"].rounds_trained == 1


def test_ledgers_record_the_same_mechanisms_on_neighbouring_records(walks):
    def without_time(entries):
        return [{k: v for k, v in e.items() if k not in ("time", "hash", "prev_hash")} for e in entries]

    assert without_time(walks["D"]["ledger"]) == without_time(walks["D'"]["ledger"])
    assert [e["kind"] for e in walks["D"]["ledger"]] == ["teacher", "distillation", "distillation"]


@pytest.mark.parametrize("kind", ["AdvertiseKeys", "ShareKeys", "ConsistencyCheckResponse", "UnmaskResponse",
                                  "AdvertiseKeys round 3"])
def test_secure_aggregation_messages_do_not_depend_on_the_records(walks, setting, kind):
    d, neighbour = walks["D"][kind], walks["D'"][kind]
    assert wire(without_signatures(d)) == wire(without_signatures(neighbour))
    anchor = TrustAnchor(setting.ca.read_bytes())
    for walked in walks.values():
        message = walked[kind]
        if kind.startswith("AdvertiseKeys"):
            verify_advertisement(anchor, round_config(2 if kind == "AdvertiseKeys" else 3), message)
        elif kind == "ConsistencyCheckResponse":
            payload = survivors_payload(walked["session"], tuple(sorted((NAME, *PEERS))))
            anchor.verify(setting.certs[NAME][0].read_bytes(), NAME, payload, message.signature)


def test_the_masked_input_is_the_dp_release_masked_and_nothing_else(walks, setting):
    """Recompute the round's DP-SGD release from its mechanism alone, mask it with the same keys: the same bytes."""
    masked = {}
    for which in ("D", "D'"):
        n = node(setting, which)  # a fresh node: same teacher, ledger and seeds as the walked one at its start
        probe = setting.probe  # as the node holds it once checked: a C-ordered copy
        received = LabelledSet(check_records(probe.x, probe.x.shape[1:], "probe"), probe.y, probe.num_classes)
        objective = OutputObjective(n.teacher, n.data, fit_output_map(n.teacher, n.data.task, received), seed=0)
        release = DPDistiller(
            n.teacher, n.data, n.settings, seed=0, objective=objective, mechanism_seed=SEED + 2,
            ledger_history=n.state.teacher_history(), teacher_history=n.state.teacher_history(),  # as at round 2
        ).train_round(STUDENT).update
        cert, key = setting.certs[NAME]
        credentials = Credentials.from_pem(setting.ca.read_bytes(), cert.read_bytes(), key.read_bytes())
        client = SecAggClient(NAME, round_config(2), credentials, FixedRandomness(b"secagg-keys".ljust(32, b".")))
        own = client.advertise()  # the same keys as the walked node's; a fresh (randomised) ECDSA signature
        roster = walks[which]["roster"]
        client.share_keys(sa.Roster(tuple(own if ad.sender == NAME else ad for ad in roster.advertisements)))
        masked[which] = client.masked_input(walks[which]["delivery"], release).packed
        assert masked[which] == walks[which]["MaskedInput"].packed
        assert np.abs(walks[which]["sum"] - release).max() <= 2 * SPEC.clip / 2**SPEC.level_bits
    assert masked["D"] != masked["D'"]  # the release does depend on the records: that is what DP-SGD bounds


def test_grad_cam_selection_is_the_same_on_neighbouring_records(setting):
    probe = setting.probe
    maps = gradcam_maps(make_student(10, 0), probe.x)
    replies = {which: node(setting, which).handle(msg.SelectRequest(1, probe.x, maps, CNN)) for which in ("D", "D'")}
    assert [wire(m) for m in replies["D"]][0] == [wire(m) for m in replies["D'"]][0]
    assert status_fields(replies["D"][1]) == status_fields(replies["D'"][1])
