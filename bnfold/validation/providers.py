"""Execution providers: names, faithful settings, and sessions that really run where asked.

Every session runs at `ORT_DISABLE_ALL` (onnxruntime fuses Conv+BatchNormalization itself from
its basic level up, which would compare a folded graph with a folded graph), sequentially, with
deterministic compute. A session counts as being on a provider only if `get_providers()` says so
once it is made: onnxruntime falls back to the CPU silently. Each provider gets the options that
keep its arithmetic at the model's precision (`FAITHFUL_OPTIONS`: no TF32 on CUDA, no fp16 in
TensorRT, MIGraphX or OpenVINO, ...), which the user may override per provider.

Plugin execution providers (onnxruntime ≥ 1.22: `register_execution_provider_library`,
`get_ep_devices`) are used through their devices (`add_provider_for_devices`).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import pkgutil
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..naming import option

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

SHORT_NAMES = {
    "cpu": CPU,
    "cuda": CUDA,
    "tensorrt": TENSORRT,
    "openvino": "OpenVINOExecutionProvider",
    "dml": "DmlExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "qnn": "QNNExecutionProvider",
}
_SHORT = {full: short for short, full in SHORT_NAMES.items()}
# Listed by onnxruntime's builds but not devices that compute a model.
NOT_COMPUTE = {"AzureExecutionProvider"}

# Options that keep each provider at the model's own precision; user options override them.
FAITHFUL_OPTIONS: dict[str, dict[str, str]] = {
    CUDA: {"use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC"},
    TENSORRT: {"trt_fp16_enable": "0", "trt_int8_enable": "0"},
    "MIGraphXExecutionProvider": {"migraphx_fp16_enable": "0", "migraphx_int8_enable": "0"},
    "OpenVINOExecutionProvider": {"precision": "ACCURACY"},
    "CoreMLExecutionProvider": {"AllowLowPrecisionAccumulationOnGPU": "0"},
    "QNNExecutionProvider": {"enable_htp_fp16_precision": "0"},
}
TF32_OPTIONS = {CUDA: {"use_tf32": "1"}}
CUDA_HOW_TO = "install onnxruntime-gpu instead of onnxruntime on a machine with an NVIDIA GPU"


def short_name(provider: str) -> str:
    """`cuda` for `CUDAExecutionProvider`; a name bnfold has no short form for, as it is."""
    return _SHORT.get(provider, provider)


def full_name(name: str) -> str:
    """The `...ExecutionProvider` name for a short name or a full one (case-insensitive)."""
    lowered = name.strip().lower()
    if lowered in SHORT_NAMES:
        return SHORT_NAMES[lowered]
    if lowered.endswith("executionprovider") and len(lowered) > len("executionprovider"):
        known = {full.lower(): full for full in SHORT_NAMES.values()}
        return known.get(lowered, name.strip())
    choices = ", ".join([*SHORT_NAMES, "auto"])
    raise InputError(
        None,
        f"unknown provider '{name}'; choose from {choices}, or a full ...ExecutionProvider name",
    )


@dataclass(frozen=True)
class ProviderRequest:
    """The providers to validate on; `explicit`: the user named them, so each is required."""

    providers: tuple[str, ...]  # full names; empty with auto until resolved
    explicit: bool

    @classmethod
    def parse(cls, spec: str | list[str] | tuple[str, ...] | None) -> ProviderRequest:
        if spec is None or spec == "auto" or list(spec) == ["auto"]:
            return cls((), False)
        names = [p.strip() for p in spec.split(",")] if isinstance(spec, str) else list(spec)
        names = [n for n in names if n]
        if not names:
            raise InputError(
                None, f"{option('providers')} is empty; give auto or a list such as cpu,cuda"
            )
        if any(n.lower() == "auto" for n in names):
            raise InputError(
                None, f"{option('providers')}: auto cannot be combined with provider names"
            )
        providers = tuple(dict.fromkeys(full_name(n) for n in names))
        for provider in providers:
            if provider in NOT_COMPUTE:
                raise InputError(None, f"{provider} does not run models itself; name another")
        return cls(providers, True)


def parse_provider_options(values: list[str] | tuple[str, ...]) -> dict[str, dict[str, str]]:
    """`NAME:KEY=VALUE` strings (`--provider-option`) as {full provider name: {key: value}}."""
    options: dict[str, dict[str, str]] = {}
    for value in values:
        name, sep, setting = value.partition(":")
        key, eq, given = setting.partition("=")
        if not sep or not eq or not name.strip() or not key.strip():
            raise InputError(None, f"{option('provider_options')} '{value}' is not NAME:KEY=VALUE")
        options.setdefault(full_name(name), {})[key.strip()] = given.strip()
    return options


@dataclass
class Unavailable:
    """Why a provider cannot be used here: `reason` is onnxruntime's full message."""

    reason: str

    @property
    def first_line(self) -> str:
        lines = self.reason.strip().splitlines()
        return lines[0] if lines else self.reason


@dataclass
class SessionFactory:
    """Makes faithful sessions (module doc). `ort` is the onnxruntime module (a stand-in in
    tests); `options` the user's provider options by full name; `tf32` allows TF32 on CUDA."""

    ort: Any
    tf32: bool = False
    options: dict[str, dict[str, str]] = field(default_factory=dict)
    # the user's option keys a provider's first session did not report taking, by provider
    untaken: dict[str, list[str]] = field(default_factory=dict)

    def provider_options(self, provider: str) -> dict[str, str]:
        """The options a session on `provider` gets: faithful ones, TF32 if allowed, the
        user's (an empty value removes an option, for an onnxruntime that does not know it)."""
        merged = dict(FAITHFUL_OPTIONS.get(provider, {}))
        if self.tf32:
            merged.update(TF32_OPTIONS.get(provider, {}))
        merged.update(self.options.get(provider, {}))
        return {key: value for key, value in merged.items() if value != ""}

    def session_options(self):
        options = self.ort.SessionOptions()
        options.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.execution_mode = self.ort.ExecutionMode.ORT_SEQUENTIAL
        options.use_deterministic_compute = True
        options.log_severity_level = 4
        return options

    def listed(self) -> list[str]:
        """Providers this onnxruntime offers: built in, and plugins with a registered device."""
        names = list(self.ort.get_available_providers())
        for device in self._plugin_devices():
            if device.ep_name not in names:
                names.append(device.ep_name)
        return names

    def auto(self) -> list[str]:
        """What `auto` tries: the CPU, then every other compute provider onnxruntime lists."""
        others = [p for p in self.listed() if p != CPU and p not in NOT_COMPUTE]
        return [CPU, *others]

    def missing(self, provider: str) -> Unavailable | None:
        """Why `provider` is not offered at all, or None."""
        if provider in self.listed():
            return None
        plugin = PLUGIN_PROVIDERS.get(provider)
        if plugin is not None:
            return Unavailable(
                f"{provider}: the plugin {plugin} is registered, but onnxruntime lists no device "
                "of it on this machine (get_ep_devices); it supports other hardware"
            )
        hint = f" ({CUDA_HOW_TO})" if provider == CUDA else ""
        return Unavailable(f"{provider} is not available in this onnxruntime{hint}")

    def create(self, source: bytes | str, provider: str, supplied: dict | None = None):
        """A session on `provider`, or `Unavailable` with onnxruntime's reason. `supplied`:
        arrays by name for the initializers the model marks as external data, handed to
        onnxruntime from memory (`add_external_initializers`; kept alive with the session)."""
        missing = self.missing(provider)
        if missing:
            return missing
        options = self.session_options()
        values = [self.ort.OrtValue.ortvalue_from_numpy(a) for a in (supplied or {}).values()]
        if values:
            options.add_external_initializers(list(supplied or {}), values)
        devices = [d for d in self._plugin_devices() if d.ep_name == provider]
        kwargs: dict[str, Any] = {}
        through_devices = bool(devices) and provider not in self.ort.get_available_providers()
        if through_devices:
            options.add_provider_for_devices(devices, self.provider_options(provider))
        else:
            providers = [(provider, self.provider_options(provider))]
            if provider != CPU:
                providers.append((CPU, {}))
            kwargs["providers"] = providers
        if provider != CPU:  # its warnings say why a provider falls back: kept, not shown
            options.log_severity_level = 2
        said = _Said()
        try:
            with said.captured(self.ort, enabled=provider != CPU):
                session = self.ort.InferenceSession(source, sess_options=options, **kwargs)
        except Exception as exc:  # onnxruntime raises many types; the message is what matters
            return Unavailable(f"onnxruntime cannot create a session: {_message(exc)}")
        used = session.get_providers()
        if not used or used[0] != provider:
            reason = f"{provider} could not be used (onnxruntime fell back to {used})"
            return Unavailable(reason + said.why())
        session.bnfold_supplied = values  # onnxruntime reads them for the session's lifetime
        if not through_devices:  # (a plugin's options go with its devices: not reported back)
            self._note_untaken(session, provider)
        return session

    def untaken_warnings(self) -> list[str]:
        """A warning for each option the user gave that a provider's session did not report
        taking: onnxruntime ignores keys a provider does not know (a misspelt one, say)."""
        return [
            f"{provider} does not report taking the option '{key}' given with "
            f"{option('provider_options')} (onnxruntime ignores options a provider does not know)"
            for provider, keys in self.untaken.items()
            for key in keys
        ]

    def _note_untaken(self, session, provider: str) -> None:
        """Keep the user's option keys for `provider` that its first session does not report
        (`get_provider_options`; a session that cannot say is taken at its word)."""
        given = self.options.get(provider)
        report = getattr(session, "get_provider_options", None)
        if not given or provider in self.untaken or report is None:
            return
        reported: dict = report().get(provider, {})
        self.untaken[provider] = [k for k, v in given.items() if v != "" and k not in reported]

    def _plugin_devices(self) -> list:
        get_devices = getattr(self.ort, "get_ep_devices", None)
        if get_devices is None:
            return []
        try:
            devices = list(get_devices())
        except Exception:  # an onnxruntime without plugin support behind the name
            return []
        return [d for d in devices if getattr(d, "ep_name", CPU) != CPU]


class _Said:
    """What onnxruntime printed while making a session: its Python banner ("EP Error ...
    Falling back") and its C++ log, which writes to the process's stderr (file descriptor 2)."""

    def __init__(self) -> None:
        self.text = ""

    @contextlib.contextmanager
    def captured(self, ort, enabled: bool):
        python_out, python_err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(python_out), contextlib.redirect_stderr(python_err):
            if not enabled:
                yield
                return
            with tempfile.TemporaryFile() as log:
                saved = os.dup(2)
                os.dup2(log.fileno(), 2)
                ort.set_default_logger_severity(2)
                try:
                    yield
                finally:
                    ort.set_default_logger_severity(4)
                    os.dup2(saved, 2)
                    os.close(saved)
                    log.seek(0)
                    native = log.read().decode("utf-8", "replace")
                    self.text = "\n".join([python_out.getvalue(), python_err.getvalue(), native])

    def why(self) -> str:
        """The lines that say what went wrong, as `: line; line`, or ""."""
        lines = [_plain(line) for line in self.text.splitlines()]
        telling = [line for line in lines if line and _TELLING.search(line)]
        return f": {'; '.join(dict.fromkeys(telling[-4:]))}" if telling else ""


def _plain(line: str) -> str:
    """A log line without colours, timestamp and logger header, or source position."""
    line = _COLOUR.sub("", line).strip()
    line = _LOG_HEADER.sub("", line)
    return _SOURCE_POSITION.sub("", line).strip()


_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
_LOG_HEADER = re.compile(r"^\S+ \S+ \[[EWIVF]:onnxruntime:[^\]]*\]\s*")
_SOURCE_POSITION = re.compile(r"^/\S+:\d+ [^\[]*?\)\s+(?=\[)")
_TELLING = re.compile(r"error|fail|unsupported|not supported|cannot|could not|unable", re.I)


def _message(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__


def register_plugin_libraries(ort, libraries: list[str]) -> list[str]:
    """Register plugin execution provider libraries: the paths given, and every installed
    `onnxruntime_ep_*` package that tells its library's path (`get_library_path()`). Returns
    notes on packages that could not be registered; a given path that cannot is an error."""
    register = getattr(ort, "register_execution_provider_library", None)
    if register is None:
        if libraries:
            raise InputError(
                None, f"onnxruntime {ort.__version__} cannot load plugin execution providers"
            )
        return []
    notes = []
    for name, path in _installed_plugins():
        problem = _register(register, name, path)
        if problem:
            notes.append(f"plugin package {name} could not be registered: {problem}")
            continue
        for provider in _provider_names(name):
            PLUGIN_PROVIDERS[provider] = name
    for path in libraries:
        problem = _register(register, f"bnfold-{Path(path).stem}", path)
        if problem:
            raise InputError(path, f"is not a usable plugin execution provider library: {problem}")
    return notes


def _register(register, name: str, path: str) -> str | None:
    if (name, path) in _REGISTERED:
        return None
    try:
        register(name, str(path))
    except Exception as exc:
        if "already registered" not in str(exc).lower():
            return _message(exc).splitlines()[0]
    _REGISTERED.add((name, path))
    return None


_REGISTERED: set[tuple[str, str]] = set()


def _installed_plugins() -> list[tuple[str, str]]:
    """(module name, library path) of installed plugin EP packages (`onnxruntime_ep_*`)."""
    found = []
    for module in sorted({m.name for m in pkgutil.iter_modules() if m.name.startswith(PLUGIN)}):
        try:
            library = importlib.import_module(module).get_library_path()
        except Exception:  # not a plugin package after all, or a broken one: nothing to use
            continue
        found.append((module, str(library)))
    return found


PLUGIN = "onnxruntime_ep_"
# The providers registered plugin packages say they bring, by name: the package.
PLUGIN_PROVIDERS: dict[str, str] = {}


def _provider_names(module: str) -> list[str]:
    """What a plugin package says it provides (`get_ep_names()` or `get_ep_name()`), if it says."""
    package = importlib.import_module(module)
    for getter in ("get_ep_names", "get_ep_name"):
        try:
            names = getattr(package, getter)()
        except Exception:  # (absent, or a broken package: it just says nothing)
            continue
        return [names] if isinstance(names, str) else [str(n) for n in names]
    return []
