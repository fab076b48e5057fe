"""Execution providers: names, faithful options, fallback detection, unusable providers, plugin
devices. onnxruntime here has only the CPU, so other providers are played by a stand-in module
that wraps the real one (the CPU computes; the stand-in says what a GPU build would)."""

from __future__ import annotations

import os
import types
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

import bnfold
from bnfold.errors import InputError
from bnfold.validation import ProviderRequest, Status, parse_provider_options, validate
from bnfold.validation.providers import (
    CPU,
    CUDA,
    FAITHFUL_OPTIONS,
    SessionFactory,
    Unavailable,
    full_name,
)
from tests.builders import MODELS

RESNET = MODELS / "resnet_tiny.onnx"
HAS_CUDA = "CUDAExecutionProvider" in onnxruntime.get_available_providers()


class _Session:
    """A real CPU session that reports the providers a stand-in build would."""

    def __init__(self, real, providers, reported=None):
        self._real = real
        self._providers = providers
        self._reported = reported or {}

    def get_providers(self):
        return self._providers

    def get_provider_options(self):
        return self._reported

    def __getattr__(self, name):
        return getattr(self._real, name)


def fake_ort(listed=(CUDA,), behaviour="works", devices=()):
    """onnxruntime as a GPU build would look: `listed` providers offered; a session asked for
    one of them `works` (runs on the CPU, says it is there), `falls back` (says CPU) or
    `raises` (a multi-line error, as onnxruntime gives)."""
    made = []

    def session(source, sess_options=None, providers=None):
        made.append({"providers": providers, "options": sess_options})
        real = onnxruntime.InferenceSession(source, sess_options, providers=[CPU])
        asked = providers[0][0] if providers else devices[0].ep_name
        if asked == CPU:
            return real
        if behaviour == "raises":
            raise RuntimeError(f"{asked} failed: libcudnn.so.9 not found\ndetail: line two")
        if behaviour == "falls back":  # onnxruntime's C++ log says why, on the process's stderr
            os.write(2, b"2026 [W:onnxruntime] [Vendor] Unsupported precision FP16 on CPU\n")
            return _Session(real, [CPU])
        given = providers[0][1] if providers else {}
        # (the provider knows every option but those named typo...)
        taken = {key: value for key, value in given.items() if not key.startswith("typo")}
        return _Session(real, [asked, CPU], {asked: taken, CPU: {}})

    class Options(onnxruntime.SessionOptions):
        def add_provider_for_devices(self, chosen, options):
            made.append({"devices": chosen, "device_options": options})

    module = types.SimpleNamespace(
        __version__=onnxruntime.__version__,
        SessionOptions=Options,
        OrtValue=onnxruntime.OrtValue,
        GraphOptimizationLevel=onnxruntime.GraphOptimizationLevel,
        ExecutionMode=onnxruntime.ExecutionMode,
        InferenceSession=session,
        get_available_providers=lambda: [*listed, CPU, "AzureExecutionProvider"],
        get_ep_devices=lambda: list(devices),
        set_default_logger_severity=lambda level: None,
        made=made,
    )
    return module


@pytest.fixture
def stand_in(monkeypatch):
    def install(**kwargs):
        module = fake_ort(**kwargs)
        monkeypatch.setattr("bnfold.validation.pipeline.import_onnxruntime", lambda: module)
        return module

    return install


def folded():
    return bnfold.fold(RESNET).model


def test_short_and_full_names():
    assert full_name("cuda") == CUDA and full_name("TensorRT") == "TensorrtExecutionProvider"
    assert full_name("cudaexecutionprovider") == CUDA
    assert full_name("MyVendorExecutionProvider") == "MyVendorExecutionProvider"
    with pytest.raises(InputError, match="unknown provider 'tpu'"):
        full_name("tpu")
    assert ProviderRequest.parse("cpu, cuda").providers == (CPU, CUDA)
    assert ProviderRequest.parse(None).explicit is False
    with pytest.raises(InputError, match="auto cannot be combined"):
        ProviderRequest.parse("auto,cpu")


def test_provider_options_parse_and_override_the_faithful_ones():
    options = parse_provider_options(
        ["cuda:use_tf32=1", "cuda:device_id=1", "openvino:a=b", "openvino:precision="]
    )
    factory = SessionFactory(onnxruntime, options=options)
    assert factory.provider_options(CUDA) == {
        "use_tf32": "1",
        "cudnn_conv_algo_search": "HEURISTIC",
        "device_id": "1",
    }
    assert factory.provider_options("OpenVINOExecutionProvider") == {"a": "b"}  # "" removes
    with pytest.raises(InputError, match="NAME:KEY=VALUE"):
        parse_provider_options(["cuda"])


def test_faithful_precision_by_default_tf32_only_when_asked():
    assert SessionFactory(onnxruntime).provider_options(CUDA)["use_tf32"] == "0"
    assert SessionFactory(onnxruntime, tf32=True).provider_options(CUDA)["use_tf32"] == "1"
    assert FAITHFUL_OPTIONS["TensorrtExecutionProvider"]["trt_fp16_enable"] == "0"


def test_auto_uses_every_listed_compute_provider(stand_in):
    module = stand_in()
    report = validate(RESNET, folded())
    assert report.passed, report.lines()
    assert [p.provider for p in report.providers] == [CPU, CUDA]
    cuda = report.providers[1]
    assert cuda.status == Status.PASSED and cuda.options["use_tf32"] == "0"
    assert cuda.outputs[0].provider_gap == 0.0  # the stand-in computes on the CPU
    asked = [m["providers"][0] for m in module.made if m.get("providers")]
    assert (CUDA, {"use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC"}) in asked
    assert all(
        m["options"].graph_optimization_level.name == "ORT_DISABLE_ALL"
        for m in module.made
        if m.get("options")
    )


def test_other_providers_run_the_plain_original_and_its_draws_in_a_session_of_their_own(
    stand_in, monkeypatch
):
    """Only the CPU runs the switchable original (bit for bit as the original at
    ORT_DISABLE_ALL); another provider may fuse within its partition: the plain original there,
    its draws from the moved original. Without the CPU among the providers, the CPU's run (the
    expected outputs) is the plain original, no draws."""
    from bnfold.validation.runs import MOVING

    stand_in()
    made: list = []
    create = SessionFactory.create

    def recorded(self, source, provider, supplied=None):
        model = getattr(source, "model", source)  # (bytes, or a file's path)
        data = model if isinstance(model, bytes) else Path(model).read_bytes()
        made.append((provider, MOVING.encode() in data))
        return create(self, source, provider, supplied)

    monkeypatch.setattr(SessionFactory, "create", recorded)
    report = validate(RESNET, folded(), providers=["cuda"])
    assert report.passed and report.providers[0].outputs[0].rounding_noise > 0
    assert made == [(CPU, False), (CUDA, False), (CUDA, False), (CUDA, False)]
    made.clear()
    assert validate(RESNET, folded(), providers=["cpu", "cuda"]).passed
    assert made[0] == (CPU, True) and (CUDA, True) not in made


def test_auto_with_a_provider_that_falls_back_reports_it_not_used(stand_in):
    stand_in(behaviour="falls back")
    report = validate(RESNET, folded())
    assert report.passed
    cuda = report.providers[1]
    assert cuda.status == Status.NOT_USED and "fell back" in cuda.reason
    assert cuda.reason.endswith(": 2026 [W:onnxruntime] [Vendor] Unsupported precision FP16 on CPU")
    assert report.to_dict()["providers_used"] == ["cpu"]
    assert report.verdict() == "validation PASSED | passed on cpu | not used: cuda"
    assert "NOT USED | cuda |" in "\n".join(report.lines())


def test_named_provider_that_cannot_run_fails_with_onnxruntime_s_full_reason(stand_in):
    stand_in(behaviour="raises")
    report = validate(RESNET, folded(), providers="cpu,cuda")
    assert not report.passed
    assert report.verdict() == (
        "validation FAILED | passed on cpu | required but unavailable: cuda"
    )
    cuda = report.providers[1]
    assert cuda.status == Status.UNAVAILABLE and "detail: line two" in cuda.reason
    assert "line two" not in "\n".join(report.lines())
    assert "line two" in "\n".join(report.lines(verbose=True))
    assert report.to_dict()["providers_used"] == ["cpu"]
    assert report.to_dict()["providers_failed"] == ["cuda"]


def test_options_a_provider_does_not_report_taking_are_warned_about(stand_in):
    """onnxruntime ignores option keys a provider does not know: a user's key that a session
    does not report back is a WARNING (the CPU provider takes none)."""
    stand_in()
    options = {CUDA: {"device_id": "0", "typo_tf32": "0"}, CPU: {"arena": "1"}}
    report = validate(RESNET, folded(), providers="cpu,cuda", provider_options=options)
    assert report.passed
    ignored = "(onnxruntime ignores options a provider does not know)"
    assert report.warnings == [
        f"{CPU} does not report taking the option 'arena' given with provider_options=... "
        + ignored,
        f"{CUDA} does not report taking the option 'typo_tf32' given with provider_options=... "
        + ignored,
    ]
    report = validate(RESNET, folded(), providers="cuda", provider_options={CUDA: {"a": "1"}})
    assert report.passed and not report.warnings


def test_named_provider_not_in_this_onnxruntime(stand_in):
    stand_in(listed=())
    report = validate(RESNET, folded(), providers=["cuda"])
    assert not report.passed and report.providers[0].status == Status.UNAVAILABLE
    assert "onnxruntime-gpu" in report.providers[0].reason


def test_wrong_candidate_fails_on_the_other_provider_too(stand_in):
    stand_in()
    model = folded()
    conv = next(t for t in model.graph.initializer if t.name == model.graph.node[0].input[1])
    weights = onnxruntime_array(conv) * np.float32(1.01)
    conv.raw_data = weights.tobytes()
    report = validate(RESNET, model, providers=["cuda"])
    assert not report.passed and report.providers[0].status == Status.FAILED


def onnxruntime_array(tensor):
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor).copy()


def test_plugin_devices_are_used_through_add_provider_for_devices(stand_in):
    device = types.SimpleNamespace(ep_name="VendorExecutionProvider", ep_vendor="Vendor")
    module = stand_in(listed=(), devices=[device])
    report = validate(
        RESNET,
        folded(),
        providers="cpu,VendorExecutionProvider",
        provider_options={"VendorExecutionProvider": {"precision": "FP32"}},
    )
    assert report.passed, report.lines()
    chosen = [m for m in module.made if "devices" in m]
    assert chosen and chosen[0]["devices"] == [device]
    assert chosen[0]["device_options"] == {"precision": "FP32"}


def test_an_installed_plugin_without_a_device_here_says_so(stand_in, monkeypatch, tmp_path):
    """onnxruntime-ep-openvino on an AMD CPU: the package registers, its factory offers no
    device; naming its provider is unavailable, with that reason (not "not installed")."""
    package = tmp_path / "onnxruntime_ep_vendor"
    package.mkdir()
    (package / "__init__.py").write_text(
        "def get_library_path():\n    return '/plugins/libvendor.so'\n"
        "def get_ep_names():\n    return ['VendorExecutionProvider']\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    module = stand_in(listed=(), devices=[])
    registered = []
    module.register_execution_provider_library = lambda name, path: registered.append(path)
    report = validate(RESNET, folded(), providers="cpu,VendorExecutionProvider")
    assert registered == ["/plugins/libvendor.so"]
    outcome = report.providers[1]
    assert outcome.status == Status.UNAVAILABLE
    assert "the plugin onnxruntime_ep_vendor is registered, but onnxruntime lists no device" in (
        outcome.reason
    )


def test_a_session_without_the_provider_is_unavailable():
    factory = SessionFactory(fake_ort(behaviour="falls back"))
    source = RESNET.read_bytes()
    assert isinstance(factory.create(source, CUDA), Unavailable)
    assert not isinstance(factory.create(source, CPU), Unavailable)


def test_no_onnxruntime_is_a_one_line_error(without_onnxruntime):
    with pytest.raises(InputError, match="validation needs onnxruntime: pip install onnxruntime"):
        validate(RESNET, RESNET)


# ----- CUDA (run on the GPU machine; skipped elsewhere) ----------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime's CUDA execution provider")
@pytest.mark.parametrize("tf32", [False, True])
def test_cuda_passes_with_and_without_tf32(tf32):
    report = validate(RESNET, folded(), providers=["cpu", "cuda"], tf32=tf32)
    assert report.passed, report.lines()
    cuda = report.providers[1]
    assert cuda.status == Status.PASSED and cuda.options["use_tf32"] == ("1" if tf32 else "0")


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime's CUDA execution provider")
def test_cuda_catches_a_wrong_candidate():
    model = folded()
    conv = next(t for t in model.graph.initializer if t.name == model.graph.node[0].input[1])
    conv.raw_data = (onnxruntime_array(conv) * np.float32(1.01)).tobytes()
    report = validate(RESNET, model, providers=["cuda"])
    assert not report.passed and report.providers[0].status == Status.FAILED


def test_onnxruntime_log_lines_lose_colours_headers_and_source_positions():
    from bnfold.validation.providers import _plain

    line = (
        "\x1b[1;31m2026-12-04 21:48:19.529851685 [E:onnxruntime:Default, provider_bridge_ort.cc:"
        "2310 Create] /onnxruntime/core/providers/openvino/openvino_parser_utils.cc:101 static "
        "std::string onnxruntime::openvino_ep::OpenVINOParserUtils::ParsePrecision(const "
        "onnxruntime::ProviderOptions&, std::string&, const std::string&) [ERROR] [OpenVINO] "
        "Unsupported inference precision is selected. CPU only supports FP32, ACCURACY.\x1b[m"
    )
    assert _plain(line) == (
        "[ERROR] [OpenVINO] Unsupported inference precision is selected. "
        "CPU only supports FP32, ACCURACY."
    )
