#!/usr/bin/env python3
"""Export the ONNX test fixtures with torch.onnx.export and record onnxruntime's outputs.

Every fixture is a small policy exported the way users export theirs; the JSON next to it holds
fixed inputs, onnxruntime's outputs and onnxruntime's features (the tensor where skillgraft
splits backbone from head), so the Rust tests compare tract and the native head against an
independent runtime.

    python3 -m venv .venv-fixtures && .venv-fixtures/bin/pip install -r tools/requirements-fixtures.txt
    .venv-fixtures/bin/python tools/make_fixtures.py            # writes tests/fixtures/onnx/
    .venv-fixtures/bin/python tools/make_fixtures.py mlp_static2   # only the fixtures named
"""

import json
import pathlib
import sys

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "onnx"
BATCH = 5
OPSET = 17


class MlpGemm(nn.Module):
    """nn.Linear layers: the classic exporter writes Gemm(transB=1); GELU is decomposed (Erf)."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(24, 64), nn.ReLU(), nn.Linear(64, 64), nn.Tanh())
        self.head = nn.Sequential(nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 6))

    def forward(self, obs):
        return self.head(self.backbone(obs))


class MlpWide(nn.Module):
    """A policy of realistic size (123k parameters) for the benchmarks: 64 -> 256 -> 256 -> 128 | 64 -> 7."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 128), nn.Tanh()
        )
        self.head = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 7))

    def forward(self, obs):
        return self.head(self.backbone(obs))


class Dense(nn.Module):
    """A layer written as x @ W + b (as JAX/Keras ports do): exported as MatMul + Add."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.w = nn.Parameter(torch.randn(n_in, n_out) / n_in**0.5)
        self.b = nn.Parameter(torch.randn(n_out) * 0.1)

    def forward(self, x):
        return x @ self.w + self.b


class MlpMatMul(nn.Module):
    """History input [N, 3, 10]; MatMul + Add layers; SiLU and tanh-GELU decomposed in the head."""

    def __init__(self):
        super().__init__()
        self.inp = Dense(30, 48)
        self.h1 = Dense(48, 32)
        self.h2 = Dense(32, 32)
        self.out = Dense(32, 4)

    def forward(self, obs):
        x = torch.flatten(obs, 1)
        feat = nn.functional.leaky_relu(self.inp(x), 0.1)
        h = nn.functional.silu(self.h1(feat))
        h = nn.functional.gelu(self.h2(h), approximate="tanh")
        return self.out(h)


class Conv(nn.Module):
    """A small conv backbone with global average pooling and an MLP head (dynamo exporter)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(2, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU()
        )
        self.head = nn.Sequential(nn.Linear(8, 16), nn.ELU(), nn.Linear(16, 3), nn.Sigmoid())

    def forward(self, obs):
        feat = self.conv(obs).mean(dim=(2, 3))
        return self.head(feat)


class MlpLayerNorm(nn.Module):
    """A head with a LayerNorm in it: splitting before the LayerNorm must be refused."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
        self.mid = nn.Linear(16, 16)
        self.norm = nn.LayerNorm(16)
        self.out = nn.Linear(16, 2)

    def forward(self, obs):
        return self.out(torch.relu(self.norm(self.mid(self.backbone(obs)))))


def export(name, module, input_shape, dynamo):
    torch.manual_seed(7)
    module = module().eval()
    example = torch.randn(BATCH, *input_shape[1:])
    path = OUT / f"{name}.onnx"
    if dynamo:
        torch.onnx.export(
            module, (example,), path, input_names=["obs"], output_names=["action"],
            dynamic_shapes=({0: torch.export.Dim("N")},), opset_version=18, dynamo=True,
            external_data=False,
        )
        # The dynamo exporter records each node's Python stack (absolute paths, line numbers):
        # drop it so the fixtures do not depend on where and from which line they were made.
        model = onnx.load(path)
        for node in model.graph.node:
            keep = [m for m in node.metadata_props if m.key != "pkg.torch.onnx.stack_trace"]
            del node.metadata_props[:]
            node.metadata_props.extend(keep)
        onnx.save(model, path)
    else:
        torch.onnx.export(
            module, (example,), path, input_names=["obs"], output_names=["action"],
            dynamic_axes={"obs": {0: "N"}, "action": {0: "N"}}, opset_version=OPSET, dynamo=False,
        )
    return path


class MlpStatic(nn.Module):
    """8 -> 16 -> 16 | -> 2, exported by dynamo with no dynamic_shapes: every shape fixed at batch 2."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh())
        self.head = nn.Linear(16, 2)

    def forward(self, obs):
        return self.head(self.backbone(obs))


def export_static(name, module, batch):
    """What torch.onnx.export(..., dynamo=True) writes when told nothing of shapes (the default
    exporter from PyTorch 2.9): input [batch, 8], output [batch, 2], the output named by the op."""
    torch.manual_seed(7)
    module = module().eval()
    path = OUT / f"{name}.onnx"
    torch.onnx.export(module, (torch.randn(batch, 8),), path, dynamo=True, external_data=False)
    model = onnx.load(path)
    for node in model.graph.node:
        keep = [m for m in node.metadata_props if m.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    onnx.save(model, path)
    return path


def features_tensor(model, before_op_count):
    """The input tensor of the first head layer: the data input of the k-th linear from the end."""
    nodes = list(model.graph.node)
    inits = {i.name for i in model.graph.initializer}
    linear = [n for n in nodes if n.op_type in ("Gemm", "MatMul")]
    node = linear[-before_op_count]
    return next(i for i in node.input if i not in inits)


def reference(path, head_layers, batch=BATCH):
    model = onnx.load(path)
    onnx.checker.check_model(model)
    feat = features_tensor(model, head_layers)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(feat))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    shape = [d.dim_value if d.dim_value else batch for d in model.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(11)
    x = rng.standard_normal(shape).astype(np.float32)
    out, features = sess.run(None, {model.graph.input[0].name: x})
    return {
        "producer": f"{model.producer_name} {model.producer_version}",
        "input_shape": shape,
        "input": x.reshape(-1).tolist(),
        "output": out.reshape(-1).tolist(),
        "output_width": int(out.size // batch),
        "features_tensor": feat,
        "features": features.reshape(-1).tolist(),
        "features_width": int(features.size // batch),
        "head_layers": head_layers,
    }


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    specs = [
        ("mlp_gemm", MlpGemm, [BATCH, 24], False, 2),
        ("mlp_matmul", MlpMatMul, [BATCH, 3, 10], False, 3),
        ("conv", Conv, [BATCH, 2, 12, 12], True, 2),
        ("mlp_layernorm", MlpLayerNorm, [BATCH, 8], False, 1),
        ("mlp_wide", MlpWide, [BATCH, 64], False, 2),
    ]
    only = sys.argv[1:]
    made = []
    for name, module, shape, dynamo, head_layers in specs:
        if not only or name in only:
            made.append((name, export(name, module, shape, dynamo), head_layers, BATCH))
    if not only or "mlp_static2" in only:
        made.append(("mlp_static2", export_static("mlp_static2", MlpStatic, 2), 1, 2))
    for name, path, head_layers, batch in made:
        ref = reference(path, head_layers, batch)
        (OUT / f"{name}.json").write_text(json.dumps(ref, indent=1) + "\n")
        print(f"{path.name}: features `{ref['features_tensor']}` ({ref['features_width']}), "
              f"output {ref['output_width']}, {path.stat().st_size} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
