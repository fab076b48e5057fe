"""Regenerate the small real ONNX models in ``models/`` that keep their BatchNormalization nodes.

Usage::

    python models/make_models.py            # writes models/*.onnx next to this file
    python models/make_models.py --out DIR  # writes them elsewhere
    python models/make_models.py --summary  # also prints a Markdown table for models/README.md

This script is a *tool*, not part of the bnfold package, and bnfold's tests never run it: they use
the ``.onnx`` files committed next to it. It needs ``torch`` (tested with torch 2.13.0+cpu) and
``onnx``; ``onnxruntime`` is used, when installed, to check every exported model against torch.
Install them in a virtual environment of their own, e.g.::

    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch==2.13.0 onnx numpy onnxruntime

The architectures are defined here in plain ``torch.nn`` (no torchvision, no downloaded weights),
built with fixed seeds, and every BatchNorm is given non-trivial parameters and running statistics
(running_mean ~ N(0, 0.5), running_var ~ U(0.5, 2), weight ~ U(0.5, 1.5), bias ~ N(0, 0.2)) before
``.eval()``, so that folding them changes the neighbouring weights in a visible way. The output is
deterministic: running the script twice gives byte-identical files.

Export uses the TorchScript exporter (``dynamo=False``) with
``training=torch.onnx.TrainingMode.PRESERVE``: with the default ``EVAL`` the exporter fuses
Conv+BatchNorm itself, while ``PRESERVE`` on an ``.eval()`` model keeps every BatchNorm as an
inference-mode ``BatchNormalization`` node (``training_mode=0``). Constant folding is left *on*
(torch's default): it does not touch BatchNormalization (its data input is not constant), and
without it ``Linear(bias=False)`` exports as ``MatMul(x, Transpose(weight))`` instead of
``MatMul(x, W)`` with ``W`` an initializer, which is what real exported models contain.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
OPSET = 17
MAX_IR_VERSION = 10  # onnxruntime(-gpu) releases refuse IR versions newer than they know
SEED = 20240607


# --------------------------------------------------------------------------------------------
# Architectures
# --------------------------------------------------------------------------------------------


def conv_bn_relu(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 Conv+BN, identity or 1x1 Conv+BN shortcut, ReLU after add."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetTiny(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn_relu(3, 16, 3)
        self.layer1 = BasicBlock(16, 16, 1)
        self.layer2 = BasicBlock(16, 32, 2)
        self.layer3 = BasicBlock(32, 64, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 32)
        self.fc_bn = nn.BatchNorm1d(32)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        x = torch.flatten(self.pool(x), 1)
        x = torch.relu(self.fc_bn(self.fc(x)))
        return self.head(x)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand+BN+ReLU6] -> 3x3 depthwise+BN+ReLU6 -> 1x1 project+BN."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.use_res else y


class MobileNetTiny(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU6(),
            InvertedResidual(16, 8, 1, expand=1),
            InvertedResidual(8, 16, 2, expand=4),
            InvertedResidual(16, 16, 1, expand=4),
            InvertedResidual(16, 24, 2, expand=4),
            nn.Conv2d(24, 64, 1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU6(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class GeneratorTiny(nn.Module):
    """DCGAN generator: latent Nx32x1x1 -> image Nx3x32x32."""

    def __init__(self, nz: int = 32, ngf: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            # 1x1 -> 4x4
            nn.ConvTranspose2d(nz, ngf * 4, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ngf * 4),
            nn.ReLU(True),
            # 4x4 -> 8x8
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf * 2),
            nn.ReLU(True),
            # 8x8 -> 16x16 (odd kernel, output_padding=1)
            nn.ConvTranspose2d(ngf * 2, ngf, 3, 2, 1, output_padding=1, bias=False),
            nn.BatchNorm2d(ngf),
            nn.ReLU(True),
            # 16x16 -> 32x32
            nn.ConvTranspose2d(ngf, 3, 4, 2, 1, bias=False),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class PointNetTiny(nn.Module):
    """PointNet classifier: shared MLP as Conv1d(k=1)+BN1d, max-pool over points, FC+BN1d."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(3, 32, 1)
        self.bn1 = nn.BatchNorm1d(32)
        self.conv2 = nn.Conv1d(32, 64, 1)
        self.bn2 = nn.BatchNorm1d(64)
        self.conv3 = nn.Conv1d(64, 128, 1)
        self.bn3 = nn.BatchNorm1d(128)
        self.fc1 = nn.Linear(128, 64, bias=False)  # exports as MatMul
        self.bn4 = nn.BatchNorm1d(64)
        self.fc2 = nn.Linear(64, 32)  # exports as Gemm
        self.bn5 = nn.BatchNorm1d(32)
        self.fc3 = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        x = torch.amax(x, dim=2)
        x = torch.relu(self.bn4(self.fc1(x)))
        x = torch.relu(self.bn5(self.fc2(x)))
        return self.fc3(x)


# name -> (constructor, input name, input shape, output name)
MODELS = {
    "resnet_tiny": (ResNetTiny, "input", (1, 3, 32, 32), "logits"),
    "mobilenet_tiny": (MobileNetTiny, "input", (1, 3, 32, 32), "logits"),
    "generator_tiny": (GeneratorTiny, "latent", (1, 32, 1, 1), "image"),
    "pointnet_tiny": (PointNetTiny, "points", (1, 3, 64), "logits"),
}


# --------------------------------------------------------------------------------------------
# Build, export, check
# --------------------------------------------------------------------------------------------


def randomize_batchnorm(model: nn.Module, gen: torch.Generator) -> int:
    count = 0
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.2)
                count += 1
    return count


def build(name: str) -> tuple[nn.Module, int]:
    ctor = MODELS[name][0]
    torch.manual_seed(SEED)
    model = ctor()
    n_bn = randomize_batchnorm(model, torch.Generator().manual_seed(SEED + 1))
    return model.eval(), n_bn


def export(name: str, out_dir: Path) -> Path:
    model, n_bn = build(name)
    _, in_name, in_shape, out_name = MODELS[name]
    x = torch.randn(*in_shape, generator=torch.Generator().manual_seed(SEED + 2))
    path = out_dir / f"{name}.onnx"
    with warnings.catch_warnings():
        # "You are using the legacy TorchScript-based ONNX export": chosen on purpose (see above).
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
        # "recommended that constant folding be turned off ... in training-amenable mode": the
        # model is in eval mode, and folding leaves BatchNormalization alone (see above).
        warnings.filterwarnings("ignore", message=".*constant folding be turned off")
        _export(model, x, path, in_name, out_name)
    m = onnx.load(str(path))
    m.ir_version = min(m.ir_version, MAX_IR_VERSION)
    onnx.save(m, str(path))
    check_structure(name, m, n_bn)
    return path


def _export(model: nn.Module, x: torch.Tensor, path: Path, in_name: str, out_name: str) -> None:
    torch.onnx.export(
        model,
        (x,),
        str(path),
        training=torch.onnx.TrainingMode.PRESERVE,
        do_constant_folding=True,
        opset_version=OPSET,
        dynamo=False,
        input_names=[in_name],
        output_names=[out_name],
        dynamic_axes={in_name: {0: "batch"}, out_name: {0: "batch"}},
    )


def check_structure(name: str, m: onnx.ModelProto, n_bn: int) -> None:
    onnx.checker.check_model(m, full_check=True)
    g = m.graph
    inits = {i.name for i in g.initializer}
    bns = [n for n in g.node if n.op_type == "BatchNormalization"]
    problems = []
    if len(bns) != n_bn:
        problems.append(f"{len(bns)} BatchNormalization nodes, torch model has {n_bn}")
    if inits & {i.name for i in g.input}:
        problems.append("initializers are listed as graph inputs")
    if any(n.op_type == "Identity" for n in g.node):
        problems.append("Identity nodes (the exporter deduplicated equal initializers)")
    for n in bns:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if attrs.get("training_mode", 0) != 0:
            problems.append(f"{n.name}: training_mode={attrs['training_mode']}")
        if len(n.output) != 1:
            problems.append(f"{n.name}: {len(n.output)} outputs")
        if not all(i in inits for i in n.input[1:]):
            problems.append(f"{n.name}: parameters are not all initializers")
    if problems:
        raise RuntimeError(f"{name}: " + "; ".join(problems))


def check_onnxruntime(name: str, path: Path) -> float | None:
    try:
        import onnxruntime as ort
    except ImportError:
        print(f"  {name}: onnxruntime not installed, skipping the numeric check", file=sys.stderr)
        return None
    model, _ = build(name)
    _, in_name, in_shape, _ = MODELS[name]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in (1, 3):
        x = torch.randn(batch, *in_shape[1:], generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            ref = model(x).numpy()
        got = sess.run(None, {in_name: x.numpy()})[0]
        err = float(np.max(np.abs(got - ref)) / max(1.0, float(np.max(np.abs(ref)))))
        if got.shape != ref.shape or err > 1e-4:
            raise RuntimeError(f"{name}: onnxruntime differs from torch (batch {batch}, {err:g})")
        worst = max(worst, err)
    return worst


def producer_of(g: onnx.GraphProto, tensor: str) -> str:
    for n in g.node:
        if tensor in n.output:
            return n.op_type
    return "graph input"


def summary_row(path: Path, err: float | None) -> str:
    m = onnx.load(str(path))
    g = m.graph
    ops = Counter(n.op_type for n in g.node)
    bn_after = Counter(
        producer_of(g, n.input[0]) for n in g.node if n.op_type == "BatchNormalization"
    )

    def shape(vi: onnx.ValueInfoProto) -> str:
        dims = vi.type.tensor_type.shape.dim
        return "x".join(d.dim_param or str(d.dim_value) for d in dims)

    return " | ".join(
        [
            f"| `{path.name}`",
            f"{path.stat().st_size / 1024:.1f} KiB",
            str(len(g.node)),
            str(ops["BatchNormalization"]),
            ", ".join(f"{k} {v}" for k, v in sorted(bn_after.items())),
            ", ".join(f"{k} {v}" for k, v in sorted(ops.items())),
            ", ".join(f"`{i.name}` {shape(i)}" for i in g.input),
            ", ".join(f"`{o.name}` {shape(o)}" for o in g.output),
            f"{m.opset_import[0].version} / {m.ir_version}",
            "-" if err is None else f"{err:.1e} |",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE, help="output folder (default: models/)")
    ap.add_argument("--summary", action="store_true", help="print a Markdown table of the models")
    ap.add_argument("names", nargs="*", help=f"models to build (default: all of {list(MODELS)})")
    args = ap.parse_args(argv)
    unknown = [n for n in args.names if n not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; known: {list(MODELS)}")
    torch.use_deterministic_algorithms(True)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.names or list(MODELS):
        path = export(name, args.out)
        err = check_onnxruntime(name, path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        print(f"{path}: {path.stat().st_size} bytes, sha256 {digest}, ort rel err {err}")
        rows.append(summary_row(path, err))
    if args.summary:
        print(
            "| file | size | nodes | BN | BN follows | op types | inputs | outputs "
            "| opset / IR | ORT vs torch |"
        )
        print("|" + " --- |" * 10)
        print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
