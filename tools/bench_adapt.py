#!/usr/bin/env python3
"""The references of `skillgraft bench adapt`, on the data it writes to --dir.

- ridge: scikit-learn Ridge(solver="cholesky") on the source's hidden activations, one alpha;
- ridge_cv: scikit-learn RidgeCV over the same alpha grid with the same whole-episode folds;
- finetune: PyTorch (CPU) training the same 512->256->A head from the same source weights with
  Adam, the same decoupled pull toward the source weights (L2-SP), MSE, and the very same
  batches in the same order (the orders skillgraft's seeded shuffle produced), then its MSE on
  the held-out rows.

A worker: it loads the data, prints one JSON line (versions, and why a missing package leaves
its rows out, so the other side still runs; the PyTorch wheel is several GB), then for each task
name read on stdin (`ridge`, `ridge_cv`, `finetune`) runs it once and prints one JSON line with
its time and result. skillgraft alternates its own runs with these, so both sides of a pair run
under the same load on a shared machine.
"""
import argparse
import json
import os
import sys
import time

import numpy as np


def load(d, name, dtype, shape):
    return np.fromfile(os.path.join(d, name), dtype=dtype).reshape(shape)


def sklearn_tasks(d, meta, result, tasks):
    try:
        import sklearn
        from sklearn.linear_model import Ridge, RidgeCV
        from threadpoolctl import threadpool_limits
    except ImportError as e:
        result["sklearn_error"] = f"{e}"
        return
    result["sklearn"] = sklearn.__version__
    n, hdim, a = meta["rows"], meta["hidden"], meta["actions"]
    h = load(d, "hidden.f64", "<f8", (n, hdim))
    y = load(d, "y.f32", "<f4", (n, a)).astype(np.float64)
    # Applied until the worker exits.
    threadpool_limits(limits=meta["threads"])
    tasks["ridge"] = (
        lambda: Ridge(alpha=meta["alpha"], solver="cholesky").fit(h, y),
        lambda model: {"coef": model.coef_.ravel().tolist()},
    )
    per = n // meta["episodes"]
    episode = np.arange(n) // per
    fold_of = np.asarray(meta["folds"])[episode]
    splits = [(np.where(fold_of != f)[0], np.where(fold_of == f)[0]) for f in range(max(meta["folds"]) + 1)]
    tasks["ridge_cv"] = (
        lambda: RidgeCV(alphas=meta["grid"], cv=splits, scoring="neg_mean_squared_error").fit(h, y),
        lambda model: {"alpha": float(model.alpha_), "coef": model.coef_.ravel().tolist()},
    )


def torch_tasks(d, meta, result, tasks):
    try:
        import torch
    except ImportError as e:
        result["torch_error"] = f"{e}"
        return
    result["torch"] = torch.__version__
    torch.set_num_threads(meta["threads"])
    n, m, f, hdim, a = meta["rows"], meta["held_out"], meta["features"], meta["hidden"], meta["actions"]
    x = torch.from_numpy(load(d, "x.f32", "<f4", (n, f)).copy())
    y = torch.from_numpy(load(d, "y.f32", "<f4", (n, a)).copy())
    xh = torch.from_numpy(load(d, "xh.f32", "<f4", (m, f)).copy())
    yh = torch.from_numpy(load(d, "yh.f32", "<f4", (m, a)).copy())
    source = [
        (load(d, "w0.f32", "<f4", (hdim, f)), load(d, "b0.f32", "<f4", (hdim,))),
        (load(d, "w1.f32", "<f4", (a, hdim)), load(d, "b1.f32", "<f4", (a,))),
    ]
    epochs, batch = meta["epochs"], meta["batch"]
    orders = torch.from_numpy(load(d, "orders.u32", "<u4", (epochs, n)).astype(np.int64))
    lr, pull = meta["lr"], meta["pull"]

    def train():
        model = torch.nn.Sequential(torch.nn.Linear(f, hdim), torch.nn.ReLU(), torch.nn.Linear(hdim, a))
        with torch.no_grad():
            for layer, (w, b) in zip([model[0], model[2]], source):
                layer.weight.copy_(torch.from_numpy(w))
                layer.bias.copy_(torch.from_numpy(b))
        params = list(model.parameters())
        anchors = [p.detach().clone() for p in params]
        opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        loss_fn = torch.nn.MSELoss()
        for e in range(epochs):
            for idx in orders[e].split(batch):
                opt.zero_grad(set_to_none=False)
                loss = loss_fn(model(x[idx]), y[idx])
                loss.backward()
                with torch.no_grad():
                    # Decoupled pull toward the source weights, on the weights the gradient saw.
                    for p, p0 in zip(params, anchors):
                        p.sub_(lr * pull * (p - p0))
                opt.step()
        return model

    def held_out(model):
        with torch.no_grad():
            return {"held_out_mse": float(torch.nn.functional.mse_loss(model(xh), yh).double())}

    tasks["finetune"] = (train, held_out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True, help="folder `skillgraft bench adapt` wrote")
    args = ap.parse_args()
    with open(os.path.join(args.dir, "meta.json")) as fh:
        meta = json.load(fh)
    result = {"numpy": np.__version__, "python": sys.version.split()[0]}
    tasks = {}
    sklearn_tasks(args.dir, meta, result, tasks)
    torch_tasks(args.dir, meta, result, tasks)
    print(json.dumps(result), flush=True)
    for line in sys.stdin:
        run, describe = tasks[line.strip()]
        t = time.perf_counter()
        out = run()
        ms = (time.perf_counter() - t) * 1e3
        print(json.dumps({"ms": ms, **describe(out)}), flush=True)


if __name__ == "__main__":
    main()
