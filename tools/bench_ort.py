#!/usr/bin/env python3
"""Time onnxruntime (one thread) on the ONNX fixtures, as `skillgraft bench inference` does tract.

For each NAME.onnx with a NAME.json (tools/make_fixtures.py), it times one control step at batch 1
on the whole model, and feature extraction at a large batch on the backbone alone (the model cut at
the features tensor with onnx.utils.Extractor), through an IOBinding with preallocated output so
Python adds as little as it can (a few µs per call remain). Prints JSON: medians in microseconds.

With --model (`skillgraft bench vision`), it times one model of any number of inputs (a vision
skill's state and image): the control step at batch 1 on --model, and features at batch 1 and at
--batch on --backbone (the same file cut at its features tensor, which skillgraft writes, so this
mode needs onnxruntime and numpy only). Random inputs, shaped as the session declares them.

    pip install -r tools/requirements-bench.txt
    python3 tools/bench_ort.py --dir tests/fixtures/onnx --iters 2000 --batch 256
    python3 tools/bench_ort.py --model policy.onnx --backbone backbone.onnx --iters 2000 --batch 64
"""

import argparse
import json
import pathlib
import time

import numpy as np
import onnxruntime as ort


def session(model_bytes):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def bound(sess, name, x):
    """An IOBinding with the input and a preallocated output bound, so a timed run measures
    onnxruntime and as little Python as its API allows."""
    return bound_all(sess, {name: x})


def bound_all(sess, feeds):
    """As bound, for every input in `feeds` (name to array)."""
    binding = sess.io_binding()
    for name, x in feeds.items():
        binding.bind_cpu_input(name, x)
    out = sess.run(None, feeds)[0]
    binding.bind_ortvalue_output(sess.get_outputs()[0].name, ort.OrtValue.ortvalue_from_numpy(np.empty_like(out)))
    return lambda: sess.run_with_iobinding(binding)


def median_us(iters, fn):
    for _ in range(iters // 10 + 1):
        fn()
    times = []
    for _ in range(max(iters, 1)):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e6)
    return float(np.median(times))


def feeds(sess, batch, rng):
    """Random float32 inputs for every input of `sess`, the batch axis (symbolic) set to `batch`."""
    out = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else batch for d in i.shape]
        if len(shape) >= 2:
            shape[0] = batch
        out[i.name] = rng.uniform(-1, 1, shape).astype(np.float32)
    return out


def skill_mode(args):
    rng = np.random.default_rng(7)
    full = session(pathlib.Path(args.model).read_bytes())
    backbone = session(pathlib.Path(args.backbone).read_bytes())
    few = max(args.iters // 50, 5)
    timings = {
        "step_us": median_us(args.iters, bound_all(full, feeds(full, 1, rng))),
        "features_1_us": median_us(args.iters, bound_all(backbone, feeds(backbone, 1, rng))),
        "features_batch_us": median_us(few, bound_all(backbone, feeds(backbone, args.batch, rng))),
    }
    print(json.dumps({"onnxruntime": ort.__version__, "batch": args.batch, "timings": timings}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", help="folder of NAME.onnx + NAME.json fixtures")
    ap.add_argument("--model", help="one model (all its inputs), with --backbone")
    ap.add_argument("--backbone", help="--model cut at its features tensor")
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    if args.model:
        if not args.backbone:
            ap.error("--model needs --backbone")
        return skill_mode(args)
    if not args.dir:
        ap.error("give --dir, or --model and --backbone")
    import onnx
    import onnx.utils

    models = {}
    for meta in sorted(pathlib.Path(args.dir).glob("*.json")):
        path = meta.with_suffix(".onnx")
        if not path.is_file():
            continue
        features = json.loads(meta.read_text())["features_tensor"]
        model = onnx.load(path)
        name = model.graph.input[0].name
        shape = [d.dim_value if d.dim_value else 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
        full = session(model.SerializeToString())
        inferred = onnx.shape_inference.infer_shapes(model)
        backbone_model = onnx.utils.Extractor(inferred).extract_model([name], [features])
        backbone = session(backbone_model.SerializeToString())
        rng = np.random.default_rng(7)
        one = rng.uniform(-1, 1, shape).astype(np.float32)
        many = rng.uniform(-1, 1, [args.batch] + shape[1:]).astype(np.float32)
        models[path.stem] = {
            "step_us": median_us(args.iters, bound(full, name, one)),
            "features_us": median_us(max(args.iters // 50, 5), bound(backbone, name, many)),
        }
    print(json.dumps({"onnxruntime": ort.__version__, "models": models}))


if __name__ == "__main__":
    main()
