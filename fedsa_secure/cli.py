"""The `fedsa-secure` command: demo, new, launch, audit, keys, aggregator, node, experiment."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from fedsa_secure.config import DATASETS, DemoOptions
from fedsa_secure.errors import FedsaError


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.handler(args) or 0
    except FedsaError as exc:
        print(f"fedsa-secure {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fedsa-secure {args.command}: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedsa-secure", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details to stderr")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run a whole federation on this machine, one process per party")
    demo.add_argument("--out", type=Path, help="run directory (default runs/<timestamp>)")
    demo.add_argument("--json", action="store_true", help="print the summary as JSON on the last line")
    _federation_options(demo)
    demo.add_argument("--test-dump-dir", type=Path, help=argparse.SUPPRESS)  # tests only: writes plaintext updates
    demo.set_defaults(handler=_demo)

    new = commands.add_parser("new", help="write a federation directory to edit: a TOML per party and federation.py")
    new.add_argument("directory", type=Path)
    _federation_options(new)
    new.set_defaults(handler=_new)

    launch = commands.add_parser("launch", help="run a federation directory on this machine, one process per party")
    launch.add_argument("directory", type=Path)
    launch.add_argument("--json", action="store_true", help="print the summary as JSON on the last line")
    launch.set_defaults(handler=_launch)

    audit = commands.add_parser("audit", help="verify privacy ledgers, recompute epsilon, write the privacy report")
    audit.add_argument("path", type=Path, help="a run directory (all its ledgers) or one ledger file (*.jsonl)")
    audit.add_argument("--json", action="store_true", help="print the whole report as JSON")
    audit.add_argument("--empirical", action="store_true",
                       help="also run a canary audit (Steinke et al. 2023) of the node that spent most")
    audit.add_argument("--out", type=Path, help="where report.json and report.html go (default: the run directory)")
    audit.add_argument("--nodes", type=Path, metavar="DIR",
                       help="the node state dirs (DIR/<node>/...) when they are not the run directory's nodes/")
    audit.set_defaults(handler=_audit)

    keys = commands.add_parser("keys", help="federation CA and certificates")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    ca = key_commands.add_parser("ca", help="create a federation CA (ca.pem, ca.key)")
    ca.add_argument("--out", type=Path, required=True)
    ca.add_argument("--name", default="fedsa-federation-ca")
    ca.set_defaults(handler=_keys_ca)
    issue = key_commands.add_parser("issue", help="issue a key pair and certificate for a party (CA side)")
    issue.add_argument("--ca", type=Path, required=True, help="directory holding ca.pem and ca.key")
    issue.add_argument("--name", required=True, help="party name: the certificate's common name")
    issue.add_argument("--out", type=Path, required=True)
    issue.add_argument("--host", action="append", default=[], help="DNS name or IP the party serves on (repeatable)")
    issue.add_argument("--role", choices=("node", "aggregator"), default="node",
                       help="node (TLS client, signs secure-aggregation keys; default) or aggregator (TLS server)")
    issue.set_defaults(handler=_keys_issue)
    request = key_commands.add_parser("request", help="create a private key and signing request (party side)")
    request.add_argument("--name", required=True)
    request.add_argument("--out", type=Path, required=True)
    request.set_defaults(handler=_keys_request)
    sign = key_commands.add_parser("sign", help="sign a party's request with the CA (CA side)")
    sign.add_argument("--ca", type=Path, required=True, help="directory holding ca.pem and ca.key")
    sign.add_argument("--csr", type=Path, required=True)
    sign.add_argument("--out", type=Path, required=True)
    sign.add_argument("--host", action="append", default=[])
    sign.add_argument("--role", choices=("node", "aggregator"), default="node",
                      help="node (default) or aggregator: the CA decides, not the request")
    sign.set_defaults(handler=_keys_sign)

    from fedsa_secure.experiment.command import add_parser as add_experiment

    add_experiment(commands)

    aggregator = commands.add_parser("aggregator", help="run the aggregator from a TOML config")
    aggregator.add_argument("--config", type=Path, required=True)
    aggregator.add_argument("--listen", metavar="HOST:PORT", help="listen here instead of at aggregator.listen")
    aggregator.add_argument("--port-file", type=Path, help="write the port it listens on here (instead of aggregator.port_file)")
    aggregator.set_defaults(handler=_aggregator)
    node = commands.add_parser("node", help="run a node from a TOML config")
    node.add_argument("--config", type=Path, required=True)
    node.add_argument("--aggregator", metavar="HOST:PORT", help="dial this address instead of node.aggregator")
    node.set_defaults(handler=_node)
    return parser


def _federation_options(command: argparse.ArgumentParser) -> None:
    """The settings of a federation that `demo` runs and `new` writes."""
    command.add_argument("--method", choices=("fedsa", "fedsa+"), default=DemoOptions.method,
                         help="fedsa+: ours (LogME selection, output distillation; default); "
                              "fedsa: the paper's (Grad-CAM selection, feature distillation)")
    command.add_argument("--dataset", choices=DATASETS, default=DemoOptions.dataset,
                         help="mnist1d: generated 1-D digits, 6 nodes holding 1,000-3,000 records each (default); "
                              "digits: load_digits, 4 nodes; mnist5k: MNIST 5,000-image subset, 6 nodes; "
                              "mnist5k-skew: the same with the digit teachers holding most records")
    command.add_argument("--rounds", type=int, default=DemoOptions.rounds,
                         help=f"federated rounds (default {DemoOptions.rounds})")
    command.add_argument("--planned-rounds", type=int, metavar="N",
                         help="rounds each node calibrates its DP noise for (default: --rounds); "
                              "a node drawn more often declines once its budget is spent")
    command.add_argument("--local-epochs", type=int, default=DemoOptions.local_epochs, metavar="N",
                         help=f"each node's passes over its records per round (default {DemoOptions.local_epochs}); "
                              "DP noise covers them all")
    command.add_argument("--seed", type=int, default=0, help="seed of the data split and models (default 0)")
    command.add_argument("--epsilon", type=float, default=DemoOptions.target_epsilon,
                         help="privacy budget of each node's records, teacher training included (default 8)")
    command.add_argument("--teacher-share", type=float, default=DemoOptions.teacher_share, metavar="F",
                         help="share of the budget each node's DP teacher spends on its own; the rounds compose on top "
                              f"(default {DemoOptions.teacher_share})")


def _options(args: argparse.Namespace, **more: Any) -> DemoOptions:
    return DemoOptions(method=args.method, dataset=args.dataset, rounds=args.rounds, planned_rounds=args.planned_rounds,
                       local_epochs=args.local_epochs, seed=args.seed, target_epsilon=args.epsilon,
                       teacher_share=args.teacher_share, **more)


def _demo(args: argparse.Namespace) -> int:
    from fedsa_secure.demo import run_demo

    return _result(run_demo(_options(args, out=args.out, dump_dir=args.test_dump_dir)), args.json)


def _new(args: argparse.Namespace) -> int:
    from fedsa_secure.scaffold import write_federation

    written = write_federation(args.directory, _options(args))
    print("\n".join(f"wrote {path}" for path in written))
    print(f"edit them (each file says what its keys do), then: fedsa-secure launch {args.directory}")
    return 0


def _launch(args: argparse.Namespace) -> int:
    from fedsa_secure.launch import launch

    return _result(launch(args.directory), args.json)


def _result(summary: dict[str, Any], as_json: bool) -> int:
    from fedsa_secure.launch import format_table

    print()
    print(format_table(summary))
    print(f"\nstudent, ledgers and summary in {summary['run_dir']} ({summary['seconds']:.0f}s)")
    verdict = "verified" if summary["privacy_verified"] else "FAILED verification (see the report)"
    print(f"privacy audit report: {summary['report']} (ledgers {verdict}; `{summary['audit_command']}` checks them again)")
    if as_json:
        print(json.dumps(summary))
    return 0


def _audit(args: argparse.Namespace) -> int:
    from fedsa_secure.privacy.audit import run_audit

    return run_audit(args.path, json_output=args.json, empirical=args.empirical, out=args.out, nodes=args.nodes)


def _keys_ca(args: argparse.Namespace) -> int:
    from fedsa_secure.crypto.pki import create_ca

    cert, key = create_ca(args.out, name=args.name)
    print(f"CA certificate {cert}\nCA private key {key} (keep it offline)")
    return 0


def _keys_issue(args: argparse.Namespace) -> int:
    from fedsa_secure.crypto.pki import issue_certificate

    cert, key = issue_certificate(args.ca / "ca.pem", args.ca / "ca.key", args.name, args.out, hosts=args.host, role=args.role)
    print(f"certificate {cert}\nprivate key {key}")
    return 0


def _keys_request(args: argparse.Namespace) -> int:
    from fedsa_secure.crypto.pki import create_signing_request

    csr, key = create_signing_request(args.name, args.out)
    print(f"signing request {csr} (send it to the CA)\nprivate key {key} (never leaves this machine)")
    return 0


def _keys_sign(args: argparse.Namespace) -> int:
    from fedsa_secure.crypto.pki import sign_request

    cert = sign_request(args.ca / "ca.pem", args.ca / "ca.key", args.csr, args.out, hosts=args.host, role=args.role)
    print(f"certificate {cert} (send it back with ca.pem)")
    return 0


def _aggregator(args: argparse.Namespace) -> int:
    from fedsa_secure.aggregator import run_aggregator
    from fedsa_secure.config import load_aggregator_config

    config = load_aggregator_config(args.config)
    if args.listen or args.port_file:
        section = replace(config.aggregator, listen=args.listen or config.aggregator.listen,
                          port_file=args.port_file or config.aggregator.port_file)
        config = replace(config, aggregator=section)
    summary = run_aggregator(config, report=lambda line: print(line, flush=True))
    print(f"done: student accuracy {summary['student_accuracy']:.4f} (scratch {summary['scratch_accuracy']:.4f})", flush=True)
    return 0


def _node(args: argparse.Namespace) -> int:
    from fedsa_secure.config import load_node_config
    from fedsa_secure.node import run_node

    config = load_node_config(args.config)
    if args.aggregator:
        config = replace(config, node=replace(config.node, aggregator=args.aggregator))
    run_node(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
