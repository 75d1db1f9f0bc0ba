"""Frozen configuration loaded from TOML and validated with errors that name the key.

Each TOML table maps onto one frozen dataclass. A field's `metadata` may carry `range`
(inclusive bounds) or `choices`; a field without a default is required. Unknown keys,
missing keys, wrong types and out-of-range values all stop with a `ConfigError` that names
the file, the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fedsa_secure.entry_points import PATTERN, EntryPoint, entry_point_or_path
from fedsa_secure.errors import ConfigError

T = TypeVar("T")


def _range(lo: float | None, hi: float | None) -> dict[str, Any]:
    return {"range": (lo, hi)}


@dataclass(frozen=True)
class TlsConfig:
    """Paths to the federation CA certificate and this party's certificate and private key."""

    ca_cert: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class SecAggConfig:
    """Fixed-point encoding and threshold of the secure sum."""

    clip: float = field(default=1.0, metadata=_range(1e-6, 1e6))  # nodes send unweighted updates; DP-SGD keeps them far inside
    level_bits: int = field(default=16, metadata=_range(2, 24))
    threshold: int = field(default=0, metadata=_range(0, 10_000))  # 0: derive from the cohort size


@dataclass(frozen=True)
class AggregatorSection:
    listen: str
    run_dir: Path
    port_file: Path | None = None
    join_timeout: float = field(default=180.0, metadata=_range(1, 86_400))
    stage_timeout: float = field(default=120.0, metadata=_range(1, 86_400))


DATASETS = ("digits", "mnist5k", "mnist5k-skew", "mnist1d")  # the names of fedsa_secure.data.FEDERATIONS
BUDGETED = ("mnist5k", "mnist5k-skew", "mnist1d")  # the federations whose probe is set by a budget
METHODS = ("fedsa", "fedsa+")  # faithful FedSA; ours: LogME selection and output distillation (issue 5)
STUDENTS = ("cnn", "resnet", "mlp")  # the built-in student architectures (models.STUDENT_ARCHS), named without torch


@dataclass(frozen=True)
class FederationSection:
    nodes: tuple[str, ...]
    method: str = field(default="fedsa", metadata={"choices": METHODS})
    dataset: str = field(default="digits", metadata={"choices": DATASETS})
    seed: int = field(default=0, metadata=_range(0, 2**31 - 1))
    rounds: int = field(default=5, metadata=_range(1, 10_000))
    cohort_size: int = field(default=3, metadata=_range(1, 10_000))
    min_cohort: int = field(default=3, metadata=_range(3, 10_000))
    select_every: int = field(default=1, metadata=_range(1, 10_000))
    # Adapt and evaluate the student every N rounds and after the last (fedsa: before every selection too);
    # the progress line of the rounds in between shows no accuracy. Adaptation costs as much as a round.
    adapt_every: int = field(default=5, metadata=_range(1, 10_000))
    average_rounds: int = field(default=5, metadata=_range(1, 10_000))  # adapt the mean student of the last N rounds
    probe_per_class: int = field(default=5, metadata=_range(1, 100))  # digits only
    probe_budget: float | None = field(default=None, metadata=_range(0.0025, 0.10))  # mnist5k*; None: 0.01
    # The student owner's own labelled records instead of the dataset's: .npz files with x (float records of the
    # nodes' shape) and y (labels 0..K-1 of the target task), or `module:function` entry points returning (x, y).
    # Both or neither.
    probe: Path | EntryPoint | None = None
    test: Path | EntryPoint | None = None
    # The student: a built-in architecture or `module:function` returning a fedsa_secure.Student for a number of
    # classes. The nodes build it from their own copy of that code (node.student): only its name and a digest travel.
    student: str | EntryPoint = "cnn"


@dataclass(frozen=True)
class TestingSection:
    """Test-only switches; never set them in a real deployment (they write plaintext to disk)."""

    dump_dir: Path | None = None


@dataclass(frozen=True)
class AggregatorConfig:
    aggregator: AggregatorSection
    federation: FederationSection
    tls: TlsConfig
    secagg: SecAggConfig = SecAggConfig()
    testing: TestingSection = TestingSection()

    @property
    def threshold(self) -> int:
        """t: survivors needed to unmask; never below min_cohort (a sum of two reveals each to the other)."""
        cohort = self.federation.cohort_size
        return self.secagg.threshold or max(self.federation.min_cohort, cohort // 2 + 1)


@dataclass(frozen=True)
class NodeSection:
    """Who the node is, whom it dials, where its records' privacy state lives, and what rounds it accepts."""

    name: str
    aggregator: str
    # The node's ledger and DP teacher, one directory per record set (privacy.state): keep it across runs,
    # since a new directory is a new budget for the same records.
    state_dir: Path
    server_name: str | None = None
    poll_wait: float = field(default=5.0, metadata=_range(0.1, 60))
    rpc_timeout: float = field(default=120.0, metadata=_range(1, 3_600))
    # How long the node keeps trying to reach an aggregator that went away (backing off up to 10 s between
    # tries) before it gives up; an aggregator that comes back is joined again.
    reconnect_timeout: float = field(default=300.0, metadata=_range(0, 86_400))
    # The smallest secure sum this node takes part in, whatever the aggregator asks: a sum over
    # fewer inputs says more about each (two reveal each other).
    min_participants: int = field(default=3, metadata=_range(3, 10_000))
    min_threshold: int = field(default=3, metadata=_range(3, 10_000))
    # The one student of the user's own code (`module:function`, as the aggregator's federation.student) that this node
    # builds when asked; built-in architectures need nothing here. Nothing the aggregator sends is imported.
    student: EntryPoint | None = None


@dataclass(frozen=True)
class DataSection:
    """The node's records: its own (`records`), or its slice of a built-in `dataset`."""

    dataset: str = field(default="digits", metadata={"choices": DATASETS})
    seed: int = field(default=0, metadata=_range(0, 2**31 - 1))
    # An .npz with x (float records, one per row, of the aggregator's probe records' shape) and y (labels 0..K-1
    # of the node's own task; optional with a teacher file, whose predictions then label them), or a
    # `module:function` entry point called with the node's name that returns (x, y), x alone, or a torch Dataset
    # of (x, y) pairs. When set, `dataset` is not used.
    records: Path | EntryPoint | None = None


@dataclass(frozen=True)
class PrivacySection:
    """The budget of the node's records: everything trained on them (its teacher, every round) spends from it."""

    target_epsilon: float = field(default=8.0, metadata=_range(0.01, 1_000))
    # The teacher's DP-SGD is calibrated to spend this share of target_epsilon on its own; the
    # distillation rounds compose on top up to target_epsilon (chosen by measurement, docs/privacy.md).
    teacher_share: float = field(default=0.5, metadata=_range(0.05, 0.95))
    delta: float = field(default=1e-5, metadata=_range(1e-12, 0.1))
    planned_rounds: int = field(default=5, metadata=_range(1, 10_000))
    local_epochs: int = field(default=2, metadata=_range(1, 1_000))  # passes over the records per round; noise covers them all
    accountant: str = field(default="prv", metadata={"choices": ("prv", "rdp")})


PROVENANCES = ("train", "dp", "public", "non-private")
DP_RUN = ("noise_multiplier", "sample_rate", "steps", "max_grad_norm")  # what a `dp` teacher's ledger entry records


@dataclass(frozen=True)
class TeacherSection:
    """The node's teacher: trained here on its records with DP-SGD (`train`), or the institution's own model (a
    TorchScript or torch.export `file`, or a `factory` and a `file` of its weights), whose provenance the node
    declares in its ledger before using it: `dp` (trained with DP-SGD on these same records: the run below is
    charged), `public` (trained on data outside these records: nothing to charge), `non-private` (trained on these
    records without DP: refused unless `accept_non_private`, and then the report says first that these records are
    not protected)."""

    provenance: str = field(default="train", metadata={"choices": PROVENANCES})
    file: Path | None = None
    # `module:function` returning the teacher's nn.Module: `file` then holds its weights (torch.save(model.state_dict()))
    # instead of a TorchScript or torch.export model.
    factory: EntryPoint | None = None
    accept_non_private: bool = False
    # provenance "dp": the DP-SGD run that trained the file's weights on these records (Poisson sampling)
    noise_multiplier: float | None = field(default=None, metadata=_range(0.01, 10_000))
    sample_rate: float | None = field(default=None, metadata=_range(1e-9, 1))
    steps: int | None = field(default=None, metadata=_range(1, 10**9))
    max_grad_norm: float | None = field(default=None, metadata=_range(1e-9, 1e9))


@dataclass(frozen=True)
class NodeConfig:
    node: NodeSection
    tls: TlsConfig
    data: DataSection = DataSection()
    privacy: PrivacySection = PrivacySection()
    teacher: TeacherSection = TeacherSection()
    testing: TestingSection = TestingSection()


def load_aggregator_config(path: Path) -> AggregatorConfig:
    config = _load(path, AggregatorConfig)
    fed = config.federation
    if len(set(fed.nodes)) != len(fed.nodes) or not fed.nodes:
        raise ConfigError(f"{path}: federation.nodes must list distinct node names, got {list(fed.nodes)}")
    if not fed.min_cohort <= fed.cohort_size <= len(fed.nodes):
        raise ConfigError(
            f"{path}: federation.cohort_size is {fed.cohort_size}; it must lie between "
            f"federation.min_cohort ({fed.min_cohort}) and the number of nodes ({len(fed.nodes)})"
        )
    if (fed.probe is None) != (fed.test is None):
        given, missing = ("probe", "test") if fed.probe is not None else ("test", "probe")
        raise ConfigError(f"{path}: federation.{given} is set but federation.{missing} is not: the student owner's own "
                          "records need both a probe file (to adapt the student) and a test file (to measure it)")
    if fed.probe_budget is not None and fed.dataset not in BUDGETED:
        raise ConfigError(
            f"{path}: federation.probe_budget applies to the {', '.join(BUDGETED)} datasets only; "
            f"the {fed.dataset} probe is set by federation.probe_per_class"
        )
    if not fed.min_cohort <= config.threshold <= fed.cohort_size:
        raise ConfigError(
            f"{path}: secagg.threshold is {config.threshold}; it must lie between "
            f"federation.min_cohort ({fed.min_cohort}) and federation.cohort_size ({fed.cohort_size})"
        )
    return config


def load_node_config(path: Path) -> NodeConfig:
    config = _load(path, NodeConfig)
    teacher = config.teacher
    given = [key for key in DP_RUN if getattr(teacher, key) is not None]
    if teacher.provenance == "train" and teacher.file is not None:
        raise ConfigError(f"{path}: teacher.file is set but teacher.provenance is 'train' (the node trains its own); "
                          f"declare how the file's teacher was trained: {', '.join(PROVENANCES[1:])}")
    if teacher.provenance != "train" and teacher.file is None:
        raise ConfigError(f"{path}: teacher.provenance is {teacher.provenance!r}: set teacher.file to the TorchScript "
                          "file of that teacher (torch.jit.save(torch.jit.script(model), path))")
    if teacher.provenance == "dp" and len(given) != len(DP_RUN):
        missing = [f"teacher.{key}" for key in DP_RUN if key not in given]
        raise ConfigError(f"{path}: a 'dp' teacher is charged to the node's ledger by the DP-SGD run that trained it; "
                          f"missing {', '.join(missing)}")
    if teacher.provenance != "dp" and given:
        raise ConfigError(f"{path}: teacher.{given[0]} describes a DP-SGD run, which only a 'dp' teacher has; "
                          f"teacher.provenance is {teacher.provenance!r}")
    if teacher.factory is not None and teacher.file is None:
        raise ConfigError(f"{path}: teacher.factory builds the teacher's network; set teacher.file to its weights "
                          "(torch.save(model.state_dict(), path)) and teacher.provenance to how they were trained")
    if teacher.accept_non_private and teacher.provenance != "non-private":
        raise ConfigError(f"{path}: teacher.accept_non_private applies to a 'non-private' teacher only")
    return config


def _load(path: Path, schema: type[T]) -> T:
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return _build(schema, raw, where="", path=Path(path))


def _build(schema: type[T], raw: Any, where: str, path: Path) -> T:
    label = where or "the top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: [{where}] must be a table")
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"{path}: unknown key {_key(where, unknown[0])!r} in {label}; allowed keys: {', '.join(sorted(fields))}"
        )
    values: dict[str, Any] = {}
    for name, spec in fields.items():
        key = _key(where, name)
        if name not in raw:
            if spec.default is dataclasses.MISSING:
                raise ConfigError(f"{path}: missing required key {key!r}")
            continue
        hint = hints[name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            values[name] = _build(hint, raw[name], key, path)
        else:
            values[name] = _coerce(raw[name], hint, key, path, spec.metadata)
    return schema(**values)


def _key(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _coerce(value: Any, hint: Any, key: str, path: Path, meta: Any) -> Any:
    args = typing.get_args(hint)
    if EntryPoint in args:
        return _code(value, [a for a in args if a is not type(None)], key, path)
    if isinstance(hint, types.UnionType) and type(None) in args:
        (hint,) = [a for a in args if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{path}: {key!r} must be a list of strings, got {value!r}")
        return tuple(value)
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{path}: {key!r} must be a path string, got {value!r}")
        return (path.parent / value) if not Path(value).is_absolute() else Path(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{path}: {key!r} is {value!r}; it must be a finite number")
    if not isinstance(value, hint) or isinstance(value, bool) != (hint is bool):
        raise ConfigError(f"{path}: {key!r} must be of type {hint.__name__}, got {value!r}")
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{path}: {key!r} is {value!r}; allowed values: {', '.join(meta['choices'])}")
    if "range" in meta:
        lo, hi = meta["range"]
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ConfigError(f"{path}: {key!r} is {value!r}; allowed range: {lo} to {hi}")
    return value


def _code(value: Any, kinds: list[Any], key: str, path: Path) -> str | Path | EntryPoint:
    """A value naming the user's code (`module:function`), or else a built-in name (`str`) or a file (`Path`)."""
    base = path.parent
    if str in kinds and value in STUDENTS:
        return str(value)
    if Path in kinds and isinstance(value, str) and value:
        return entry_point_or_path(value, base)
    if isinstance(value, str) and PATTERN.match(value):
        return EntryPoint(value, base)
    allowed = [*(["one of " + ", ".join(STUDENTS)] if str in kinds else []), *(["a file path"] if Path in kinds else []),
               "module:function (your code, in this config's directory or installed)"]
    raise ConfigError(f"{path}: {key!r} is {value!r}; it must be {' or '.join(allowed)}")


@dataclass(frozen=True)
class DemoOptions:
    """What `fedsa-secure demo` runs; its defaults are the command's (kept here, where the CLI can read
    them without importing the demo's heavy dependencies)."""

    out: Path | None = None
    # The default is the setting where fedsa+ pays off (README, "What the demo shows"): six nodes
    # holding 1,000-3,000 records each, 30 rounds of one pass. Any method and dataset can be asked for.
    method: str = "fedsa+"  # or "fedsa" (the paper's recipe)
    dataset: str = "mnist1d"  # or "digits", "mnist5k", "mnist5k-skew"
    rounds: int = 30
    planned_rounds: int | None = None  # rounds each node calibrates its noise for; None: `rounds`
    local_epochs: int = 1  # each node's passes over its records per round
    seed: int = 0
    target_epsilon: float = 8.0
    teacher_share: float = PrivacySection.teacher_share  # of target_epsilon, spent by each node's DP teacher alone
    delta: float = 1e-5
    dump_dir: Path | None = None  # test-only: nodes and aggregator write plaintext/masked vectors here
    startup_timeout: float = 120.0
