"""Export real-architecture ONNX models with trained-looking BatchNorm statistics (no downloads).

Every model is built with its default random initialisation (no pretrained weights; seeded), put
in eval mode, and each BatchNorm module gets statistics that look trained, from a
`torch.Generator` seeded per model: running_mean = 0.5·N(0,1), running_var = 0.2 + 2·U(0,1),
weight (γ) = 1 + 0.3·N(0,1), bias (β) = 0.2·N(0,1). Export: the TorchScript exporter
(`dynamo=False`), opset 17, `do_constant_folding=True`, static shapes; the dynamo exporter
(`optimize=False`) only if that fails. A model that fails is skipped with its reason.

In eval mode the TorchScript exporter's constant folding fuses Conv → BatchNormalization away, so
the export is made with `training=TrainingMode.PRESERVE` on the eval-mode model: constants are still
folded, but every BatchNormalization node stays (inference form, running statistics);
`--fuse-bn` exports in plain eval mode instead. The ONNX IR version is capped at 10.

Every export is then loaded in onnxruntime (CPU, ORT_DISABLE_ALL), run on an N(0,1) input and
compared with PyTorch; a `manifest.json` in --out lists each file with its input, BN count and
opset, and the models that failed with why.

torch, torchvision and timm are not bnfold dependencies: use a virtual environment outside the
repository:

    python3 -m venv /work/torchenv
    /work/torchenv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /work/torchenv/bin/pip install timm onnx onnxruntime onnxscript
    /work/torchenv/bin/python benchmarks/export_real_models.py  # all, into /work/realmodels
    /work/torchenv/bin/python benchmarks/export_real_models.py --models resnet18 yolo_head

yolov8n (Detect head, output [1, 84, 8400] at 640) and yolov8n_cls (224) are built from the
ultralytics YAML without weights (`/work/torchenv/bin/pip install ultralytics`); neither
ultralytics' exporter nor its fuse() is used, so the BatchNormalization nodes stay.

`--keras` exports Keras models through tf2onnx instead (opset 17, same statistics, weights
random): a MobileNetV2 (NHWC input) twice, with tf2onnx's default optimizers (its
remove_back_to_back fuses Conv → BN: no BN left) and with `optimizers={}` (every BN kept,
Transposes around them); and, with the default optimizers, keras_mlp_bn (Dense → BN, input
[1, 20]: Keras writes that BN as arithmetic, MatMul → Mul → Add in the ONNX), keras_cnn_bn
(Conv2D → BN → ReLU → DepthwiseConv2D → BN → ReLU → pool → Dense, [1, 32, 32, 3]; tf2onnx folds
both BNs into the Convs) and keras_cnn_bn_unfused (the same with BatchNormalization(fused=False):
the depthwise Conv is followed by Mul → Add); keras_mixconv (three Conv2D branches → Concatenate
→ BN, [1, 16, 16, 8]) and keras_mixconv_unfused (its BN as Mul → Add after the Concat), each
with and without the optimizers.
It needs a TensorFlow environment with
Keras 2 (TF 2.15) and an onnx that works with TF's ml_dtypes 0.3:

    python3 -m venv /work/tfenv
    /work/tfenv/bin/pip install tensorflow-cpu==2.15.1 tf2onnx onnxruntime onnx==1.17.0
    /work/tfenv/bin/python benchmarks/export_real_models.py --keras

`--paddle` exports PaddlePaddle's ResNet-18 and MobileNetV2 (paddle.vision, random weights, the
same statistics) through paddle2onnx; `--jax` two Flax NNX models (a CNN with BN after Conv and
after Linear, NHWC; an MLP with BN on its input, before a Linear) through jax2onnx:

    python3 -m venv /work/paddleenv
    /work/paddleenv/bin/pip install paddlepaddle paddle2onnx onnx onnxruntime
    /work/paddleenv/bin/python benchmarks/export_real_models.py --paddle
    python3 -m venv /work/jaxenv
    /work/jaxenv/bin/pip install jax jaxlib flax jax2onnx onnx onnxruntime
    /work/jaxenv/bin/python benchmarks/export_real_models.py --jax

`--keras3` exports Keras 3 models (a CNN with BN after Conv2D, DepthwiseConv2D and Dense; a
MobileNetV2, alpha 0.35) through Keras' own `model.export(format="onnx")` (tf2onnx with its
optimizers), and the CNN again through tf2onnx with its optimizers off:

    python3 -m venv /work/keras3env
    /work/keras3env/bin/pip install tensorflow-cpu keras tf2onnx onnx onnxruntime
    /work/keras3env/bin/python benchmarks/export_real_models.py --keras3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
import warnings
import zlib
from pathlib import Path

import numpy as np
import onnx

MAX_IR_VERSION = 10
OPSET = 17
SIZE_LIMIT_MB = 120


# --------------------------------------------------------------------------- torch models


def _torchvision(name: str, **kwargs):
    def build():
        import torchvision

        return getattr(torchvision.models, name)(weights=None, **kwargs)

    return build


def _timm(name: str):
    def build():
        import timm

        return timm.create_model(name, pretrained=False)

    return build


def _yolo_head():
    """A small YOLO-like detector: Conv-BN-SiLU backbone, three levels (strides 8, 16, 32),
    per-level box and class branches; output [1, 4 + 80, 8400] at 640×640: decoded boxes
    (cx, cy, w, h in pixels, up to ~1e3) concatenated along axis 1 with sigmoid class scores in
    [0, 1]."""
    import torch
    from torch import nn

    def cbs(c_in, c_out, k=3, s=1):
        return nn.Sequential(
            nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False), nn.BatchNorm2d(c_out), nn.SiLU()
        )

    class Head(nn.Module):
        def __init__(self, c_in, stride, size, classes=80):
            super().__init__()
            self.stride = stride
            self.box = nn.Sequential(cbs(c_in, 64), cbs(64, 64), nn.Conv2d(64, 4, 1))
            self.cls = nn.Sequential(cbs(c_in, 96), cbs(96, 96), nn.Conv2d(96, classes, 1))
            n = size // stride
            ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
            grid = torch.stack([xs, ys]).reshape(1, 2, n * n).float() + 0.5
            self.register_buffer("grid", grid, persistent=False)

        def forward(self, x):
            b = self.box(x).flatten(2)  # [1, 4, n*n]
            xy = (self.grid + 2 * torch.tanh(b[:, :2])) * self.stride
            wh = nn.functional.softplus(b[:, 2:]) * self.stride * 4
            return torch.cat([xy, wh], 1), torch.sigmoid(self.cls(x).flatten(2))

    class YoloHead(nn.Module):
        def __init__(self, size=640):
            super().__init__()
            self.stem = nn.Sequential(cbs(3, 16, s=2), cbs(16, 32, s=2))  # /4
            self.p3 = nn.Sequential(cbs(32, 64, s=2), cbs(64, 64), cbs(64, 64, k=1))  # /8
            self.p4 = nn.Sequential(cbs(64, 128, s=2), cbs(128, 128))  # /16
            self.p5 = nn.Sequential(cbs(128, 256, s=2), cbs(256, 256), cbs(256, 256, k=1))  # /32
            self.heads = nn.ModuleList(
                [Head(64, 8, size), Head(128, 16, size), Head(256, 32, size)]
            )

        def forward(self, x):
            p3 = self.p3(self.stem(x))
            p4 = self.p4(p3)
            p5 = self.p5(p4)
            outs = [h(p) for h, p in zip(self.heads, (p3, p4, p5), strict=True)]
            boxes = torch.cat([o[0] for o in outs], 2)
            scores = torch.cat([o[1] for o in outs], 2)
            return torch.cat([boxes, scores], 1)  # [1, 84, 8400]

    return YoloHead()


def _pointnet_linear(bias: bool = True):
    """A PointNet-style encoder written with nn.Linear on the points (input [1, N, 3]): per block
    Linear → transpose(1, 2) → BatchNorm1d → ReLU → transpose back, then a max over the points
    and a classifier. The export has MatMul → Add(bias) → Transpose → BatchNormalization (with
    bias=False, as the Linear before a BN is often written: MatMul → Transpose → BN)."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c_in: int, c_out: int) -> None:
            super().__init__()
            self.linear = nn.Linear(c_in, c_out, bias=bias)
            self.bn = nn.BatchNorm1d(c_out)

        def forward(self, x):
            return torch.relu(self.bn(self.linear(x).transpose(1, 2))).transpose(1, 2)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.Sequential(Block(3, 64), Block(64, 128), Block(128, 1024))
            self.head = nn.Linear(1024, 40)

        def forward(self, x):
            return self.head(self.blocks(x).max(dim=1).values)

    return Net()


def _pointnet_product():
    """A PointNet-style encoder on channels-first points (input [1, 3, N]) whose shared per-point
    layers are written as products with the weight on the left, `torch.matmul(W, x)` (+ a bias
    per row in the first block), as code that avoids Conv1d does: BatchNorm1d on the raw
    points, then per block matmul → BatchNorm1d → ReLU, a max over the points and a
    classifier. The export has BatchNormalization → MatMul(W, ·) (forward), MatMul(W, ·) →
    Add(bias [C, 1]) → BatchNormalization and MatMul(W, ·) → BatchNormalization."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c_in: int, c_out: int, bias: bool) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(c_out, c_in) / c_in**0.5)
            self.bias = nn.Parameter(0.1 * torch.randn(c_out)) if bias else None
            self.bn = nn.BatchNorm1d(c_out)

        def forward(self, x):
            y = torch.matmul(self.weight, x)
            if self.bias is not None:
                y = y + self.bias[:, None]
            return torch.relu(self.bn(y))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.input_bn = nn.BatchNorm1d(3)
            self.blocks = nn.Sequential(
                Block(3, 64, True), Block(64, 128, False), Block(128, 1024, False)
            )
            self.head = nn.Linear(1024, 40)

        def forward(self, x):
            return self.head(self.blocks(self.input_bn(x)).max(dim=2).values)

    return Net()


def _ultralytics(cfg: str):
    """An ultralytics model built from its YAML (no weights, no download), e.g. yolov8n.yaml
    (Detect head: output [1, 4 + 80, anchors], boxes in pixels and sigmoid class scores) or
    yolov8n-cls.yaml (Classify head: softmax [1, 1000]). ultralytics' exporter and fuse() are
    not used: they fold BN into Conv. In eval mode both heads return a tuple (output, raw
    features): the wrapper keeps the output."""

    def build():
        from torch import nn
        from ultralytics.nn.tasks import ClassificationModel, DetectionModel

        task = ClassificationModel if "-cls" in cfg else DetectionModel
        net = task(cfg, verbose=False)

        class FirstOutput(nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, x):
                y = self.net(x)
                return y[0] if isinstance(y, (tuple, list)) else y

        return FirstOutput()

    return build


# name: (builder, input height = width)
MODELS = {
    "resnet18": (_torchvision("resnet18"), 224),
    "resnet50": (_torchvision("resnet50"), 224),
    "mobilenet_v2": (_torchvision("mobilenet_v2"), 224),
    "densenet121": (_torchvision("densenet121"), 224),
    "inception_v3": (_torchvision("inception_v3", aux_logits=False, init_weights=False), 299),
    "seresnet50": (_timm("seresnet50"), 224),
    "efficientnet_b0": (_timm("efficientnet_b0"), 224),
    "mobilenetv3_large_100": (_timm("mobilenetv3_large_100"), 224),
    "regnety_008": (_timm("regnety_008"), 224),
    "mixnet_s": (_timm("mixnet_s"), 224),
    "repvgg_a0": (_timm("repvgg_a0"), 224),  # train-time branches: 3x3 + 1x1 + identity BN
    "dpn68": (_timm("dpn68"), 224),  # dual paths: BN after Concat of residual and dense parts
    "yolo_head": (_yolo_head, 640),
    "yolov8n": (_ultralytics("yolov8n.yaml"), 640),
    "yolov8n_cls": (_ultralytics("yolov8n-cls.yaml"), 224),
    "pointnet_linear": (_pointnet_linear, (1, 1024, 3)),  # (an input shape: not an image)
    "pointnet_linear_nobias": (lambda: _pointnet_linear(bias=False), (1, 1024, 3)),
    "pointnet_product": (_pointnet_product, (1, 3, 1024)),
}


def model_seed(name: str, base: int) -> int:
    return (base + zlib.crc32(name.encode())) % (2**31)


def set_trained_bn_stats(model, seed: int) -> int:
    """Trained-looking statistics on every BatchNorm module; returns how many were set."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    count = 0
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                continue
            c = module.num_features
            if module.running_mean is not None:
                module.running_mean.copy_(0.5 * torch.randn(c, generator=gen))
                module.running_var.copy_(0.2 + 2 * torch.rand(c, generator=gen))
            if module.weight is not None:
                module.weight.copy_(1 + 0.3 * torch.randn(c, generator=gen))
                module.bias.copy_(0.2 * torch.randn(c, generator=gen))
            count += 1
    return count


def _finish(path: Path) -> onnx.ModelProto:
    """Cap the IR version, re-save, check."""
    model = onnx.load(str(path))
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path))
    return model


def export_torch(name: str, out: Path, seed: int, fuse_bn: bool) -> dict:
    import torch

    build, size = MODELS[name]
    s = model_seed(name, seed)
    torch.manual_seed(s)
    model = build().eval()
    n_bn = set_trained_bn_stats(model, s)
    shape = (1, 3, size, size) if isinstance(size, int) else size
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(s + 1))
    path = out / f"{name}.onnx"
    common = dict(input_names=["input"], output_names=["output"], opset_version=OPSET)
    exporter = "torchscript"
    mode = torch.onnx.TrainingMode.EVAL if fuse_bn else torch.onnx.TrainingMode.PRESERVE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (x,),
                str(path),
                dynamo=False,
                do_constant_folding=True,
                training=mode,
                **common,
            )
    except Exception as exc:  # fall back to the dynamo exporter
        print(f"  TorchScript exporter failed ({type(exc).__name__}: {exc}); trying dynamo=True")
        exporter = "dynamo"
        torch.onnx.export(
            model, (x,), str(path), dynamo=True, external_data=False, optimize=fuse_bn, **common
        )
    proto = _finish(path)
    with torch.no_grad():
        expected = model(x).numpy()
    return {
        "exporter": exporter,
        "bn_modules": n_bn,
        "seed": s,
        **describe(path, proto),
        **check_ort(path, x.numpy(), expected),
    }


# --------------------------------------------------------------------------- keras / tf2onnx


def _set_keras_bn_stats(model, seed: int) -> int:
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    count = 0
    for layer in model.layers:
        if not isinstance(layer, tf.keras.layers.BatchNormalization):
            continue
        c = layer.moving_mean.shape[-1]
        layer.moving_mean.assign((0.5 * rng.standard_normal(c)).astype(np.float32))
        layer.moving_variance.assign((0.2 + 2 * rng.random(c)).astype(np.float32))
        if layer.gamma is not None:
            layer.gamma.assign((1 + 0.3 * rng.standard_normal(c)).astype(np.float32))
        if layer.beta is not None:
            layer.beta.assign((0.2 * rng.standard_normal(c)).astype(np.float32))
        count += 1
    return count


def _keras_mobilenetv2():
    import tensorflow as tf

    return tf.keras.applications.MobileNetV2(
        input_shape=(224, 224, 3), alpha=1.0, weights=None, include_top=True
    )


def _keras_mlp():
    """Dense → BN on a 2-D tensor: Keras computes that BN as arithmetic (no FusedBatchNorm):
    MatMul → Mul → Add in the ONNX ([C] constants; the Dense's zero-initialised bias is folded
    into the Add, and the last Dense is a bare MatMul)."""
    import tensorflow as tf
    from tensorflow.keras import layers

    inp = layers.Input((20,))
    x = layers.ReLU()(layers.BatchNormalization()(layers.Dense(64)(inp)))
    x = layers.BatchNormalization()(layers.Dense(32)(x))
    return tf.keras.Model(inp, layers.Dense(10)(x), name="mlp_bn")


def _keras_cnn(fused: bool = True):
    """Conv2D → BN → ReLU → DepthwiseConv2D → BN → ReLU → global average pool → Dense (NHWC).
    fused=True: FusedBatchNormV3, which tf2onnx's optimizers fold into the Convs (no BN, no
    Mul/Add left); fused=False: Keras computes the BNs as arithmetic, and the depthwise one stays
    as Conv → Mul → Add ([1, C, 1, 1] constants; tf2onnx folds the first one into its Conv)."""

    def build():
        import tensorflow as tf
        from tensorflow.keras import layers

        def bn():
            return layers.BatchNormalization(fused=fused)

        inp = layers.Input((32, 32, 3))
        x = layers.ReLU()(bn()(layers.Conv2D(16, 3, padding="same")(inp)))
        x = layers.ReLU()(bn()(layers.DepthwiseConv2D(3, padding="same")(x)))
        out = layers.Dense(10)(layers.GlobalAveragePooling2D()(x))
        return tf.keras.Model(inp, out, name="cnn_bn")

    return build


def _keras_mixconv(fused: bool = True):
    """MixConv block (NHWC): three Conv2D branches (kernels 1, 3, 5; 6, 5 and 5 filters) →
    Concatenate → BN → ReLU → global average pool → Dense. fused=False: Keras computes the BN
    as arithmetic, which tf2onnx writes as Mul → Add after the Concat."""

    def build():
        import tensorflow as tf
        from tensorflow.keras import layers

        inp = layers.Input((16, 16, 8))
        branches = [
            layers.Conv2D(width, kernel, padding="same")(inp)
            for width, kernel in ((6, 1), (5, 3), (5, 5))
        ]
        x = layers.BatchNormalization(fused=fused)(layers.Concatenate()(branches))
        out = layers.Dense(10)(layers.GlobalAveragePooling2D()(layers.ReLU()(x)))
        return tf.keras.Model(inp, out, name="mixconv_bn")

    return build


# seed name: (builder, input shape, {file name: tf2onnx optimizers}); optimizers=None: all of
# tf2onnx's optimizers; {}: none of them.
KERAS_MODELS = {
    "keras_mobilenetv2": (
        _keras_mobilenetv2,
        (1, 224, 224, 3),
        {"keras_mobilenetv2": None, "keras_mobilenetv2_noopt": {}},
    ),
    "keras_mlp_bn": (_keras_mlp, (1, 20), {"keras_mlp_bn": None}),
    "keras_cnn_bn": (_keras_cnn(), (1, 32, 32, 3), {"keras_cnn_bn": None}),
    "keras_cnn_bn_unfused": (
        _keras_cnn(fused=False),
        (1, 32, 32, 3),
        {"keras_cnn_bn_unfused": None},
    ),
    "keras_mixconv": (
        _keras_mixconv(),
        (1, 16, 16, 8),
        {"keras_mixconv": None, "keras_mixconv_noopt": {}},
    ),
    "keras_mixconv_unfused": (
        _keras_mixconv(fused=False),
        (1, 16, 16, 8),
        {"keras_mixconv_unfused": None, "keras_mixconv_unfused_noopt": {}},
    ),
}
KERAS_FILES = [name for _, _, files in KERAS_MODELS.values() for name in files]


def export_keras(out: Path, seed: int, only: list[str] | None) -> tuple[dict, dict]:
    """The tf-keras models through tf2onnx, each file with its optimizers; the files of one
    model share its seed (so the same weights)."""
    import tensorflow as tf
    import tf2onnx

    files = {
        name: (build, shape) for build, shape, names in KERAS_MODELS.values() for name in names
    }
    optimizers = {name: opt for _, _, names in KERAS_MODELS.values() for name, opt in names.items()}
    seed_names = {name: model for model, (_, _, names) in KERAS_MODELS.items() for name in names}

    def export_one(build, shape, s: int, path: Path):
        tf.keras.utils.set_random_seed(s)
        model = build()
        n_bn = _set_keras_bn_stats(model, s)
        x = np.random.default_rng(s + 1).standard_normal(shape).astype(np.float32)
        expected = model(x, training=False).numpy()
        spec = (tf.TensorSpec(shape, tf.float32, name="input"),)
        chosen = optimizers[path.stem]
        tf2onnx.convert.from_keras(
            model, input_signature=spec, opset=OPSET, output_path=str(path), optimizers=chosen
        )
        exporter = f"tf2onnx {tf2onnx.__version__} (tf {tf.__version__}), " + (
            "default optimizers" if chosen is None else "optimizers disabled"
        )
        return exporter, n_bn, x, expected

    return _export_all(files, out, seed, only, export_one, seed_names)


# --------------------------------------------------------------------------- Paddle, JAX


def _paddle_vision(name: str):
    def build():
        import paddle

        return getattr(paddle.vision.models, name)(pretrained=False)

    return build


# file name: (builder, input shape), exported by paddle2onnx (through paddle.onnx.export)
PADDLE_MODELS = {
    "paddle_resnet18": (_paddle_vision("resnet18"), (1, 3, 224, 224)),
    "paddle_mobilenet_v2": (_paddle_vision("mobilenet_v2"), (1, 3, 224, 224)),
}


def export_paddle(out: Path, seed: int, only: list[str] | None) -> tuple[dict, dict]:
    """PaddlePaddle's vision models with trained-looking BN statistics, through paddle2onnx."""
    import paddle
    import paddle2onnx

    def export_one(build, shape, s: int, path: Path):
        paddle.seed(s)
        model = build()
        n_bn = _set_paddle_bn_stats(model, s)
        model.eval()
        x = np.random.default_rng(s + 1).standard_normal(shape).astype(np.float32)
        expected = model(paddle.to_tensor(x)).numpy()
        spec = [paddle.static.InputSpec(list(shape), "float32", "input")]
        paddle.onnx.export(model, str(path.with_suffix("")), input_spec=spec, opset_version=OPSET)
        exporter = f"paddle2onnx {paddle2onnx.__version__} (paddle {paddle.__version__})"
        return exporter, n_bn, x, expected

    return _export_all(PADDLE_MODELS, out, seed, only, export_one)


def _export_all(
    models: dict, out: Path, seed: int, only, export_one, seed_names: dict | None = None
) -> tuple[dict, dict]:
    """`export_one(build, shape, seed, path) -> (exporter, BN count, input, framework output)`
    for each of `models` (name: (builder, input shape)), then checked and described; a model
    that fails is reported and the others go on. Each is seeded by its name, or by the name
    `seed_names` gives it (files of one model, exported several ways)."""
    results, failures = {}, {}
    for name, (build, shape) in models.items():
        if only and name not in only:
            continue
        print(name, flush=True)
        try:
            s = model_seed((seed_names or {}).get(name, name), seed)
            path = out / f"{name}.onnx"
            exporter, n_bn, x, expected = export_one(build, shape, s, path)
            proto = _finish(path)
            results[name] = {
                "exporter": exporter,
                "bn_modules": n_bn,
                "seed": s,
                **describe(path, proto),
                **check_ort(path, x, expected),
            }
            print("  " + summary(name, results[name]), flush=True)
        except Exception as exc:  # report it, go on
            failures[name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
            print(f"  FAILED {name}: {failures[name]}", flush=True)
    return results, failures


def _set_paddle_bn_stats(model, seed: int) -> int:
    import paddle

    rng = np.random.default_rng(seed)
    count = 0
    for layer in model.sublayers():
        if isinstance(layer, paddle.nn.layer.norm._BatchNormBase):
            c = layer._mean.shape[0]
            layer._mean.set_value((0.5 * rng.standard_normal(c)).astype("float32"))
            layer._variance.set_value((0.2 + 2 * rng.uniform(size=c)).astype("float32"))
            layer.weight.set_value((1 + 0.3 * rng.standard_normal(c)).astype("float32"))
            layer.bias.set_value((0.2 * rng.standard_normal(c)).astype("float32"))
            count += 1
    return count


def _flax_cnn():
    """Flax NNX (NHWC): Conv → BN → ReLU → Conv(stride 2) → BN → ReLU → mean over H, W →
    Linear → BN → ReLU → Linear, input [1, 32, 32, 3]."""
    from flax import nnx

    class CNN(nnx.Module):
        def __init__(self, rngs):
            self.c1 = nnx.Conv(3, 16, (3, 3), rngs=rngs)
            self.b1 = nnx.BatchNorm(16, use_running_average=True, rngs=rngs)
            self.c2 = nnx.Conv(16, 32, (3, 3), strides=2, rngs=rngs)
            self.b2 = nnx.BatchNorm(32, use_running_average=True, rngs=rngs)
            self.d1 = nnx.Linear(32, 64, rngs=rngs)
            self.b3 = nnx.BatchNorm(64, use_running_average=True, rngs=rngs)
            self.d2 = nnx.Linear(64, 10, rngs=rngs)

        def __call__(self, x):
            x = nnx.relu(self.b1(self.c1(x)))
            x = nnx.relu(self.b2(self.c2(x)))
            x = x.mean(axis=(1, 2))
            x = nnx.relu(self.b3(self.d1(x)))
            return self.d2(x)

    return CNN(nnx.Rngs(0))


def _flax_mlp():
    """Flax NNX: BN on the input features → Linear → ReLU → BN → Linear (a BN before a Dense:
    a forward fold), input [1, 20]."""
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.b0 = nnx.BatchNorm(20, use_running_average=True, rngs=rngs)
            self.d1 = nnx.Linear(20, 64, rngs=rngs)
            self.b1 = nnx.BatchNorm(64, use_running_average=True, rngs=rngs)
            self.d2 = nnx.Linear(64, 10, rngs=rngs)

        def __call__(self, x):
            return self.d2(self.b1(nnx.relu(self.d1(self.b0(x)))))

    return MLP(nnx.Rngs(0))


# file name: (builder, input shape), exported by jax2onnx
JAX_MODELS = {"flax_cnn_bn": (_flax_cnn, (1, 32, 32, 3)), "flax_mlp_bn": (_flax_mlp, (1, 20))}


def export_jax(out: Path, seed: int, only: list[str] | None) -> tuple[dict, dict]:
    """Flax NNX models with trained-looking BN statistics, through jax2onnx."""
    import importlib.metadata

    import jax
    import jax2onnx

    def export_one(build, shape, s: int, path: Path):
        model = build()
        n_bn = _set_flax_bn_stats(model, s)
        x = np.random.default_rng(s + 1).standard_normal(shape).astype(np.float32)
        expected = np.asarray(model(x))
        onnx.save(jax2onnx.to_onnx(model, [shape], model_name=path.stem), str(path))
        version = importlib.metadata.version("jax2onnx")
        return f"jax2onnx {version} (jax {jax.__version__})", n_bn, x, expected

    return _export_all(JAX_MODELS, out, seed, only, export_one)


def _set_flax_bn_stats(model, seed: int) -> int:
    import jax.numpy as jnp
    from flax import nnx

    rng = np.random.default_rng(seed)
    count = 0
    for _, layer in nnx.iter_graph(model):
        if isinstance(layer, nnx.BatchNorm):
            c = layer.mean.value.shape[0]
            layer.mean.value = jnp.asarray(0.5 * rng.standard_normal(c), jnp.float32)
            layer.var.value = jnp.asarray(0.2 + 2 * rng.uniform(size=c), jnp.float32)
            layer.scale.value = jnp.asarray(1 + 0.3 * rng.standard_normal(c), jnp.float32)
            layer.bias.value = jnp.asarray(0.2 * rng.standard_normal(c), jnp.float32)
            count += 1
    return count


def _keras3_cnn():
    """Keras 3: Conv2D → BN → ReLU → DepthwiseConv2D → BN → ReLU → pool → Dense → BN → Dense
    (NHWC, [1, 32, 32, 3])."""
    import keras
    from keras import layers

    inp = keras.Input((32, 32, 3))
    x = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(16, 3, padding="same")(inp)))
    x = layers.ReLU()(layers.BatchNormalization()(layers.DepthwiseConv2D(3, padding="same")(x)))
    x = layers.BatchNormalization()(layers.Dense(32)(layers.GlobalAveragePooling2D()(x)))
    return keras.Model(inp, layers.Dense(10)(x), name="keras3_cnn_bn")


def _keras3_mobilenetv2():
    import keras

    return keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3), alpha=0.35)


# file name: (builder, input shape), exported by Keras 3's model.export(format="onnx")
KERAS3_MODELS = {
    "keras3_cnn_bn": (_keras3_cnn, (1, 32, 32, 3)),
    # through tf2onnx with its optimizers off (TensorFlow's own graph optimisation still runs)
    "keras3_cnn_bn_noopt": (_keras3_cnn, (1, 32, 32, 3)),
    "keras3_mobilenetv2": (_keras3_mobilenetv2, (1, 224, 224, 3)),
}


def export_keras3(out: Path, seed: int, only: list[str] | None) -> tuple[dict, dict]:
    """Keras 3 models (TensorFlow backend) with trained-looking BN statistics, through Keras'
    own ONNX export."""
    import os

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    def export_one(build, shape, s: int, path: Path):
        keras.utils.set_random_seed(s)
        model = build()
        n_bn = _set_keras3_bn_stats(model, s)
        x = np.random.default_rng(s + 1).standard_normal(shape).astype(np.float32)
        expected = np.asarray(model(x, training=False))
        if path.stem.endswith("_noopt"):
            import tensorflow as tf
            import tf2onnx

            spec = (tf.TensorSpec(shape, tf.float32, name="input"),)
            tf2onnx.convert.from_keras(
                model, spec, opset=OPSET, output_path=str(path), optimizers={}
            )
            exporter = f"tf2onnx {tf2onnx.__version__} (keras {keras.__version__}), no optimizers"
            return exporter, n_bn, x, expected
        model.export(str(path), format="onnx", verbose=False)
        return f"keras {keras.__version__} export(format='onnx')", n_bn, x, expected

    return _export_all(KERAS3_MODELS, out, seed, only, export_one)


def _set_keras3_bn_stats(model, seed: int) -> int:
    import keras

    rng = np.random.default_rng(seed)
    count = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.moving_mean.shape[0]
            layer.moving_mean.assign((0.5 * rng.standard_normal(c)).astype("float32"))
            layer.moving_variance.assign((0.2 + 2 * rng.uniform(size=c)).astype("float32"))
            layer.gamma.assign((1 + 0.3 * rng.standard_normal(c)).astype("float32"))
            layer.beta.assign((0.2 * rng.standard_normal(c)).astype("float32"))
            count += 1
    return count


# --------------------------------------------------------------------------- checks and report


def describe(path: Path, proto: onnx.ModelProto) -> dict:
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    ops = [n.op_type for n in proto.graph.node]
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    size_mb = path.stat().st_size / 2**20
    return {
        "file": path.name,
        "size_mb": round(size_mb, 2),
        "inputs": {
            i.name: [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim]
            for i in inputs
        },
        "outputs": {
            o.name: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim]
            for o in proto.graph.output
        },
        "batchnorm_nodes": ops.count("BatchNormalization"),
        "nodes": len(ops),
        "opset": opset,
        "ir_version": proto.ir_version,
        "over_size_limit": size_mb > SIZE_LIMIT_MB,
    }


def check_ort(path: Path, x: np.ndarray, expected: np.ndarray) -> dict:
    """Run in onnxruntime (CPU, no graph optimisation) on x; compare with the framework's output."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    got = session.run(None, feed)[0]
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    return {
        "ort_ok": bool(np.isfinite(got).all()),
        "output_max_abs": float(np.abs(got).max()),
        "max_abs_diff_vs_framework": float(diff.max()),
        "max_rel_diff_vs_framework": float((diff / (np.abs(expected) + 1e-6)).max()),
    }


def summary(name: str, r: dict) -> str:
    ((iname, ishape),) = r["inputs"].items()
    return (
        f"{r['file']}: {r['size_mb']} MB, input {iname} {ishape}, "
        f"BN {r['batchnorm_nodes']}/{r['nodes']} nodes, opset {r['opset']}, ir {r['ir_version']}, "
        f"{r['exporter']}; ORT ok={r['ort_ok']}, |out|max {r['output_max_abs']:.3g}, "
        f"max abs diff vs framework {r['max_abs_diff_vs_framework']:.2g}"
        + (f"  (over {SIZE_LIMIT_MB} MB!)" if r["over_size_limit"] else "")
    )


def write_manifest(out: Path, results: dict, failures: dict) -> None:
    path = out / "manifest.json"
    old = json.loads(path.read_text()) if path.exists() else {"models": {}, "failed": {}}
    old["models"].update(results)
    old["failed"].update(failures)
    for name in results:
        old["failed"].pop(name, None)
    for name in failures:
        old["models"].pop(name, None)
    path.write_text(json.dumps(old, indent=1, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/work/realmodels"))
    parser.add_argument(
        "--models",
        nargs="*",
        help=f"subset of: {' '.join(MODELS)} (--keras: {' '.join(KERAS_FILES)})",
    )
    parser.add_argument("--seed", type=int, default=0, help="base seed (per model: + crc32(name))")
    parser.add_argument(
        "--fuse-bn",
        action="store_true",
        help="export in plain eval mode (the TorchScript exporter then fuses Conv → BN away)",
    )
    parser.add_argument(
        "--keras", action="store_true", help="export the Keras models via tf2onnx (TF venv)"
    )
    parser.add_argument(
        "--paddle", action="store_true", help="export Paddle models via paddle2onnx (Paddle venv)"
    )
    parser.add_argument(
        "--jax", action="store_true", help="export Flax models via jax2onnx (JAX venv)"
    )
    parser.add_argument(
        "--keras3", action="store_true", help="export Keras 3 models (Keras 3 venv)"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    if args.paddle or args.jax or args.keras3:
        export = export_paddle if args.paddle else export_jax if args.jax else export_keras3
        results, failures = export(args.out, args.seed, args.models)
    elif args.keras:
        unknown = set(args.models or ()) - set(KERAS_FILES)
        if unknown:
            parser.error(f"unknown Keras models: {sorted(unknown)}; choose from {KERAS_FILES}")
        results, failures = export_keras(args.out, args.seed, args.models)
    else:
        unknown = set(args.models or ()) - set(MODELS)
        if unknown:
            parser.error(f"unknown models: {sorted(unknown)}; choose from {list(MODELS)}")
        results, failures = {}, {}
        for name in args.models or MODELS:
            print(name, flush=True)
            start = time.time()
            try:
                results[name] = export_torch(name, args.out, args.seed, args.fuse_bn)
                print(f"  {summary(name, results[name])} ({time.time() - start:.0f} s)", flush=True)
            except Exception as exc:  # report it, go on with the rest
                first_line = (str(exc).splitlines() or [""])[0]
                failures[name] = f"{type(exc).__name__}: {first_line}"
                traceback.print_exc()
                print(f"  FAILED {name}: {failures[name]}", flush=True)
    write_manifest(args.out, results, failures)
    print(f"\n{len(results)} exported to {args.out}, {len(failures)} failed")
    for name, why in failures.items():
        print(f"  FAILED {name}: {why}")
    return 1 if failures and not results else 0


if __name__ == "__main__":
    sys.exit(main())
