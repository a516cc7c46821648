"""The one declaration of the line's node set, read by `launch/line.launch.py` and by
`defect-perception line`, so both start the same nodes with the same parameters.

Node convention (every node module follows it): module `defect_perception.nodes.<name>`
defines `NODE_CLASS` (an rclpy Node subclass constructible with no arguments; name,
namespace and parameters come from the ROS arguments) and `main()`, and ends with
`if __name__ == "__main__": sys.exit(main())` so `python -m` runs it.

`config/line.yaml` sections are keyed `/**/camera:` so rcl matches them in any namespace
(`--params-file` works as is); plain `camera:` keys in users' files are accepted too. The
tools here rewrite the sections to fully qualified names (`/line/camera:`) before handing
them over, so two lines in different namespaces never pick up each other's sections.

Every value, from the file and from `-p`, is checked against the parameters the node declares
(its ParamSpec table) and fitted to their types before anything starts: rcl itself would make
the node exit on `uri: 0` for a string or `fps: 5` for a double, and would ignore a misspelt
name without a word.
"""
from __future__ import annotations

import difflib
import functools
import importlib.util
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from defect_perception.core.paths import resolve
from defect_perception.core.yaml_file import read_yaml_mapping
from defect_perception.launcher.values import ParamValueError, coerce_to, normalise_list, parse_value

PACKAGE = "defect_perception"
DEFAULT_NAMESPACE = "/line"
DEFAULT_PARAMS_FILE = "config/line.yaml"
SAMPLE_RECORDING = "data/sample/deeppcb_sample"


class LineSpecError(ValueError):
    """A line that cannot be started as asked (names the node, file or value)."""


def _model_present(param: str, default: str) -> Callable[[NodeSpec, dict, set], str | None]:
    """The node needs `<model dir>/model.json`; `default` mirrors the node's own default."""
    def check(spec: NodeSpec, params: dict, _running: set) -> str | None:
        path = resolve(str(params.get(param) or default))
        if not (path / "model.json").is_file():
            return f"no model at {path} (parameter {spec.name}.{param}; train/export one first)"
        return None
    return check


def _has_sources(spec: NodeSpec, params: dict, running: set) -> str | None:
    sources = params.get("sources")
    if isinstance(sources, list) and sources and not set(sources) & running:
        return f"none of its sources {sources} is running"
    return None


@dataclass(frozen=True)
class NodeSpec:
    """One node of the line. `enabled_if(spec, params, running) -> reason | None` says why
    the node cannot run with these parameters (`running`: the nodes started before it)."""

    name: str
    description: str
    default: bool = True
    enabled_if: Callable[[NodeSpec, dict, set], str | None] | None = None

    @property
    def module(self) -> str:
        return f"{PACKAGE}.nodes.{self.name}"

    @property
    def executable(self) -> str:
        """The console script (`ros2 run defect_perception <executable>`)."""
        return self.name

    def available(self) -> bool:
        return importlib.util.find_spec(self.module) is not None


# Order matters: producers first, so `running` is known when a consumer is checked.
NODES: tuple[NodeSpec, ...] = (
    NodeSpec("camera", "frame source: device, video, folder, rosbag2 or synthetic"),
    NodeSpec("inspector", "distilled defect classifier / detector",
             enabled_if=_model_present("model", "models/deeppcb-student")),
    NodeSpec("anomaly", "teacher-student anomaly model",
             enabled_if=_model_present("model", "models/deeppcb-anomaly")),
    NodeSpec("sorter", "decision fusion, fail-safe, PLC / robot output", enabled_if=_has_sources),
)
BY_NAME = {n.name: n for n in NODES}
# Nodes that subscribe to camera/image_raw.
IMAGE_CONSUMERS = ("inspector", "anomaly")
# The topic that carries each stage's per-part output (the last stage paces ack mode).
OUTPUT_TOPIC = {"sorter": "sorter/decision", "inspector": "inspector/result", "anomaly": "anomaly/result"}


@dataclass
class LinePlan:
    """What to start: nodes in order, each node's parameters, and what was left out and why."""

    namespace: str
    params_file: Path
    nodes: list[NodeSpec]
    params: dict[str, dict[str, Any]]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def fqn(self, node: str) -> str:
        return f"{self.namespace.rstrip('/')}/{node}"

    def last_stage_topic(self) -> str | None:
        """The output topic of the last processing stage running (sorter > inspector > anomaly)."""
        return next((OUTPUT_TOPIC[n] for n in ("sorter", "inspector", "anomaly") if n in self.names), None)

    def ros_params(self) -> dict[str, Any]:
        """Parameter-file content with fully qualified node keys (what rcl matches)."""
        return {self.fqn(n): {"ros__parameters": dict(self.params[n])} for n in self.names}

    def write_params(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump(self.ros_params(), sort_keys=False))
        return path


def check_namespace(ns: str) -> str:
    ns = "/" + ns.strip("/") if ns.strip("/") else "/"
    parts = [p for p in ns.split("/") if p]
    if any(not p.replace("_", "a").isalnum() or p[0].isdigit() for p in parts):
        raise LineSpecError(f"namespace {ns!r}: use letters, digits and '_' (not starting with a digit)")
    return ns


def read_params_file(path: str | Path, namespace: str = DEFAULT_NAMESPACE) -> dict[str, dict[str, Any]]:
    """node name -> flat parameters from a ROS 2 parameter YAML. Keys may be `camera`,
    `/**/camera`, `<namespace>/camera`, or `/**` (applies to every node)."""
    doc = _read_sections(path, namespace)
    out = {name: dict(values) for name, values in doc.nodes.items()}
    for name in list(out) + [n.name for n in NODES]:
        out[name] = {**doc.common, **out.get(name, {})}
    return out


@dataclass
class _ParamsDoc:
    """A parameter file as sections: `nodes[node][name]` (node sections merged), `common`
    (the `/**` section), `origin[(node, name)]` / `common_origin[name]` = the section key a
    value came from, `texts[(section key, name)]` = a plain scalar as written in the file."""

    path: Path
    nodes: dict[str, dict[str, Any]]
    common: dict[str, Any]
    origin: dict[tuple[str, str], str]
    common_origin: dict[str, str]
    texts: dict[tuple[str, str], str]


def _read_sections(path: str | Path, namespace: str) -> _ParamsDoc:
    p = resolve(path)
    if not p.is_file():
        raise LineSpecError(f"parameter file {p} does not exist")
    doc = read_yaml_mapping(p, "parameter file", LineSpecError)
    ns = namespace.rstrip("/")
    out = _ParamsDoc(p, {}, {}, {}, {}, _scalar_texts(p))
    for key, section in doc.items():
        key = str(key)
        if not isinstance(section, dict) or not isinstance(section.get("ros__parameters", {}), dict) \
                or "ros__parameters" not in section:
            raise LineSpecError(f"parameter file {p}: section {key!r} needs a 'ros__parameters:' mapping")
        flat = _flatten(section["ros__parameters"])
        if key in ("/**", "**"):
            out.common.update(flat)
            out.common_origin.update(dict.fromkeys(flat, key))
            continue
        name = key
        for prefix in ("/**/", ns + "/" if ns else "/"):
            if name.startswith(prefix):
                name = name[len(prefix):]
        name = name.lstrip("/")
        if "/" in name or "*" in name:
            raise LineSpecError(f"parameter file {p}: section {key!r} is not a node of namespace "
                                f"{namespace!r} (use the node name, e.g. 'camera:')")
        out.nodes.setdefault(name, {}).update(flat)
        out.origin.update({(name, k): key for k in flat})
    return out


def _scalar_texts(path: Path) -> dict[tuple[str, str], str]:
    """(section key, flat name) -> the text of each unquoted scalar value, as written (`uri: 0`
    gives "0", `frame_id: 007` gives "007"): what a string parameter gets."""
    try:
        root = yaml.compose(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    texts: dict[tuple[str, str], str] = {}

    def walk(node, section: str, prefix: str) -> None:
        for k, v in node.value:
            if isinstance(v, yaml.MappingNode):
                walk(v, section, f"{prefix}{k.value}.")
            elif isinstance(v, yaml.ScalarNode) and v.style is None:
                texts[(section, f"{prefix}{k.value}")] = v.value

    if isinstance(root, yaml.MappingNode):
        for key, section in root.value:
            if isinstance(section, yaml.MappingNode):
                for k, v in section.value:
                    if k.value == "ros__parameters" and isinstance(v, yaml.MappingNode):
                        walk(v, str(key.value), "")
    return texts


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def parse_override(text: str) -> tuple[str, str, Any]:
    """`camera.fps=30` -> ("camera", "fps", 30.0-ish YAML value)."""
    key, sep, raw = text.partition("=")
    node, dot, name = key.strip().partition(".")
    if not sep or not dot or not node or not name:
        raise LineSpecError(f"--param {text!r}: expected NODE.NAME=VALUE, e.g. camera.fps=30")
    if node not in BY_NAME:
        raise LineSpecError(f"--param {text!r}: unknown node {node!r}{_suggest(node, BY_NAME)}")
    try:
        return node, name, normalise_list(parse_value(raw))
    except ParamValueError as e:
        raise LineSpecError(f"--param {text!r}: {e}") from None


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f" (known: {', '.join(known)}{hint})"


def _suggest_param(name: str, known: Iterable[str], listed: bool = True) -> str:
    """The closest parameter names, else every name (`listed`) or a pointer to the tables."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3)
    if close:
        return f"; did you mean {' or '.join(map(repr, close))}? (all parameters: docs/parameters.md)"
    return f" (it has: {', '.join(known)})" if listed else " (all parameters: docs/parameters.md)"


# Parameters every rclpy node declares by itself (not in the nodes' ParamSpec tables).
ROS_STANDARD_PARAMS = {"use_sim_time": "bool", "start_type_description_service": "bool"}
ROS_STANDARD_PREFIXES = ("qos_overrides.",)


@functools.cache
def declared_params(node: str) -> dict[str, str] | None:
    """name -> ROS type ("double", "string", "integer array", ...) of each parameter `node`
    declares in its ParamSpec table (imports the node module, which does not import torch);
    None when the module is not in this build or cannot be imported here (the node then
    fails at its own start and says why)."""
    spec = BY_NAME[node]
    if not spec.available():
        return None
    try:
        from defect_perception.launcher.param_docs import node_specs

        specs = node_specs(spec)
    except Exception:  # an import error is reported by the node itself when it starts
        return None
    if not specs:
        return None
    return {s.name: s.ptype().name.lower().replace("_", " ") for s in specs}


def _typed(node: str, name: str, value: Any, text: str | None, where: str) -> Any:
    """`value` as the type `node` declares for `name` (see launcher.values.coerce_to);
    LineSpecError naming `where` (file and section, or the -p flag), the node, the parameter
    and the value for an unknown name or a value that does not fit."""
    declared = declared_params(node) if node in BY_NAME else None
    if declared is None or name.startswith(ROS_STANDARD_PREFIXES):
        return value
    expected = declared.get(name) or ROS_STANDARD_PARAMS.get(name)
    if expected is None:
        raise LineSpecError(f"{where}: node {node} has no parameter {name!r}{_suggest_param(name, declared)}")
    try:
        return coerce_to(value, expected, text)
    except ParamValueError as e:
        raise LineSpecError(f"{where}: {node} parameter {name!r} {e}") from None


def _file_params(doc: _ParamsDoc, notes: list[str]) -> dict[str, dict[str, Any]]:
    """Each node's parameters from the file, checked and typed: the `/**` values the node
    declares, then its own section. A `/**` name no node declares is an error; a section
    that names no node of the line is kept (ignored) with a note."""
    def where(section: str) -> str:
        return f"parameter file {doc.path}, section {section!r}"

    declared = {n.name: d for n in NODES if (d := declared_params(n.name)) is not None}
    for name, section in doc.common_origin.items():
        if declared and not name.startswith(ROS_STANDARD_PREFIXES) and name not in ROS_STANDARD_PARAMS \
                and not any(name in d for d in declared.values()):
            every = {k for d in declared.values() for k in d}
            raise LineSpecError(f"{where(section)}: no node of the line has a parameter {name!r}"
                                f"{_suggest_param(name, every, listed=False)}")
    params: dict[str, dict[str, Any]] = {}
    for node in [n.name for n in NODES] + [n for n in doc.nodes if n not in BY_NAME]:
        mine = declared.get(node)
        merged: dict[str, Any] = {}
        for name, value in doc.common.items():
            if mine is None or name in mine or name in ROS_STANDARD_PARAMS or \
                    name.startswith(ROS_STANDARD_PREFIXES):
                section = doc.common_origin[name]
                merged[name] = _typed(node, name, value, doc.texts.get((section, name)), where(section))
        for name, value in doc.nodes.get(node, {}).items():
            section = doc.origin[(node, name)]
            merged[name] = _typed(node, name, value, doc.texts.get((section, name)), where(section))
        params[node] = merged
    for node in doc.nodes:
        if node not in BY_NAME:
            sections = sorted({s for (n, _), s in doc.origin.items() if n == node})
            notes.append(f"parameter file {doc.path}: section {', '.join(map(repr, sections))} matches no "
                         f"node of the line{_suggest(node, BY_NAME)}; ignored")
    return params


def plan_line(config: str | Path | None = None, namespace: str | None = None,
              nodes: Iterable[str] | None = None, overrides: Iterable[str] = (),
              extra: dict[str, dict[str, Any]] | None = None) -> LinePlan:
    """Decide which nodes start and with which parameters.

    nodes: names asked for explicitly (a node that cannot run is then an error);
        None = every default node that can run (the others are skipped with the reason).
    overrides: `node.name=value` strings (highest priority); extra: node -> params set by the
        caller (e.g. `--demo`), applied before the overrides.
    """
    ns = check_namespace(namespace or DEFAULT_NAMESPACE)
    config_path = resolve(config or DEFAULT_PARAMS_FILE).absolute()
    notes: list[str] = []
    # every value is checked against the parameters the node declares and fitted to their
    # types here: rcl refuses `uri: 0` for a string or `fps: 5` for a double at node start
    params = _file_params(_read_sections(config_path, ns), notes)
    for node, values in (extra or {}).items():
        for name, value in values.items():
            params.setdefault(node, {})[name] = _typed(node, name, value, None, "set by the launcher")
    overrides = list(overrides)
    for text in overrides:
        node, name, value = parse_override(text)
        typed = text.partition("=")[2].strip()  # `-p camera.uri=0`: a string parameter gets "0"
        params.setdefault(node, {})[name] = _typed(node, name, value, typed, f"--param {text!r}")

    explicit = nodes is not None
    wanted = [n.strip() for n in (nodes or []) if n.strip()] if explicit else \
        [n.name for n in NODES if n.default]
    for name in wanted:
        if name not in BY_NAME:
            raise LineSpecError(f"--nodes: unknown node {name!r}{_suggest(name, BY_NAME)}")
    if explicit and not wanted:
        raise LineSpecError("--nodes: no node given")

    chosen: list[NodeSpec] = []
    skipped: list[tuple[str, str]] = []
    running: set[str] = set()
    for spec in NODES:
        if spec.name not in wanted:
            continue
        reason = None if spec.available() else f"module {spec.module} is not installed in this build"
        if reason is None and spec.enabled_if is not None:
            reason = spec.enabled_if(spec, params.get(spec.name, {}), running)
        if reason:
            if explicit:
                raise LineSpecError(f"node {spec.name} was asked for but cannot run: {reason}")
            skipped.append((spec.name, reason))
            continue
        chosen.append(spec)
        running.add(spec.name)
    if not chosen:
        raise LineSpecError("no node can run: " + "; ".join(f"{n}: {r}" for n, r in skipped))
    user_set = {o.split("=", 1)[0].strip() for o in overrides}
    if "camera" in running and "camera.wait_subscribers" not in user_set:
        # the first frame waits until every image consumer started here is connected
        params["camera"]["wait_subscribers"] = sum(n in running for n in IMAGE_CONSUMERS)
    sources = params.get("sorter", {}).get("sources")
    trim = "sorter" in running and not explicit and "sorter.sources" not in user_set
    if trim and isinstance(sources, list):
        kept = [s for s in sources if s in running]
        if kept != sources:
            # a skipped stage would make the sorter decide every part fail-safe
            params["sorter"]["sources"] = kept
            notes.append(f"sorter joins {kept} only: {sorted(set(sources) - set(kept))} not running "
                         "(with --nodes or -p sorter.sources=... the configured sources are kept)")
    unused = sorted(set(o.partition(".")[0] for o in overrides) - running)
    if unused and explicit:
        raise LineSpecError(f"--param given for node(s) not in the line: {', '.join(unused)}")
    return LinePlan(namespace=ns, params_file=config_path, nodes=chosen,
                    params={n.name: params.get(n.name, {}) for n in chosen}, skipped=skipped, notes=notes)
