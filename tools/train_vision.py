#!/usr/bin/env python3
"""Train the vision source skill `skills/reach-arm-a-vision` from simulated arm-a episodes.

The runtime adapts heads; it does not train conv nets. This script is how such a policy arrives:
a small CNN (three convolutions and a spatial softmax, which turns each feature map into the
image position it responds to) reads the camera, its keypoints are concatenated with the joint
state into the `features` tensor, and an MLP head maps them to joint velocity commands. It is
trained by behaviour cloning on episodes that `skillgraft sim --camera` records, exported to
ONNX, and written out as a skill folder with its manifest. Every batch's frames are shifted,
turned, zoomed and recoloured a little (`augment`), as another camera of the same model mounted
by another hand would see them: without it the policy reads world positions off pixel positions
and fails on arm-b's camera (10 % success with arm-a's arm, 97 % with it).

    skillgraft sim --robot arm-a --demos 200 --seed 1 --noise 0.3 --camera --out /tmp/vision-demos
    python3 -m venv .venv-vision && .venv-vision/bin/pip install -r tools/requirements-vision.txt
    .venv-vision/bin/python tools/train_vision.py /tmp/vision-demos --out skills/reach-arm-a-vision \
        --threads 2 --probe tests/fixtures/vision/probe.json

Reproducible: the same episodes, seed and thread count give the same ONNX bytes (deterministic
algorithms, seeded shuffling, a fixed thread count; checked by `--check-reproducible`).
"""

import argparse
import hashlib
import io
import json
import math
import pathlib
import shutil
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
from torch import nn

JOINTS = ["shoulder", "elbow", "wrist"]
JOINT_TOPIC = "/joint_states"
CAMERA_TOPIC = "/camera/image_raw"
ACTION_TOPIC = "/arm/cmd"
# The model's image: the camera's 96x96 frame resized (bilinear, half-pixel centres: what
# skillgraft's preprocessing and F.interpolate(align_corners=False) both do) to this size.
SIZE = 64
# Image normalisation the manifest declares: value / 255, then (v - 0.5) / 0.25 per channel.
IMAGE_MEAN, IMAGE_STD = 0.5, 0.25
OPSET = 17


def read_episode(path):
    """(states [T,6], images [T,H,W,3] uint8, actions [T,3]): each action paired with the newest
    joint state and camera frame that arrived before it, as skillgraft's dataset pairs them."""
    state, image = None, None
    states, images, actions = [], [], []
    with open(path, "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        for _schema, channel, message, msg in reader.iter_decoded_messages(log_time_order=True):
            if channel.topic == JOINT_TOPIC:
                by_name = dict(zip(msg.name, zip(msg.position, msg.velocity)))
                state = [by_name[j][0] for j in JOINTS] + [by_name[j][1] for j in JOINTS]
            elif channel.topic == CAMERA_TOPIC:
                if msg.encoding != "rgb8":
                    raise SystemExit(f"{path}: camera encoding {msg.encoding}, this script reads rgb8")
                rows = np.frombuffer(bytes(msg.data), dtype=np.uint8).reshape(msg.height, msg.step)
                image = rows[:, : msg.width * 3].reshape(msg.height, msg.width, 3)
            elif channel.topic == ACTION_TOPIC and state is not None and image is not None:
                states.append(state)
                images.append(image)
                actions.append(list(msg.data[:3]))
    if not actions:
        raise SystemExit(f"{path}: no action paired with a joint state and a camera frame; record with --camera")
    return np.array(states, np.float64), np.stack(images), np.array(actions, np.float64)


def preprocess(images_u8):
    """uint8 [N,H,W,3] -> float32 [N,3,SIZE,SIZE], normalised as the manifest declares."""
    x = torch.from_numpy(images_u8).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=False)
    return ((x / 255.0) - IMAGE_MEAN) / IMAGE_STD


def augment(images, gen, args):
    """A camera of the same model mounted a little differently, on every batch: the picture
    shifted, turned, zoomed, and lit in another colour (images normalised as `preprocess` makes
    them). Joint states are untouched, so the policy cannot learn where things are in the world
    from where they are in the picture; it has to use where the tip is relative to the target,
    which survives a moved camera."""
    n = len(images)
    u = lambda *shape: torch.rand(*shape, generator=gen) * 2 - 1  # noqa: E731
    turn = u(n) * math.radians(args.aug_turn_deg)
    zoom = 1 + u(n) * args.aug_zoom
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = zoom * torch.cos(turn), -zoom * torch.sin(turn)
    theta[:, 1, 0], theta[:, 1, 1] = zoom * torch.sin(turn), zoom * torch.cos(turn)
    theta[:, :, 2] = u(n, 2) * args.aug_shift
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    moved = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # Colour in [0, 1] pixel units: a gain and an offset per channel.
    gain = 1 + u(n, 3, 1, 1) * args.aug_colour
    offset = u(n, 3, 1, 1) * args.aug_colour * 0.5
    pixels = moved * IMAGE_STD + IMAGE_MEAN
    return ((pixels * gain + offset) - IMAGE_MEAN) / IMAGE_STD


class SpatialSoftmax(nn.Module):
    """Each channel's softmax over the image, then its expected (x, y) position in [-1, 1]."""

    def __init__(self, channels, h, w):
        super().__init__()
        # Fixed sizes, so the exported graph reshapes by constants (no Shape/Gather chains).
        self.c, self.hw = channels, h * w
        # A learnt sharpness (Levine et al. 2016): without it the softmax stays broad and every
        # keypoint is pulled toward the image centre, too imprecise to end within 3 cm.
        self.log_beta = nn.Parameter(torch.tensor(0.0))
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        self.register_buffer("grid", torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1))

    def forward(self, x):
        p = torch.softmax(x.reshape(-1, self.c, self.hw) * self.log_beta.exp(), dim=-1)
        return torch.matmul(p, self.grid).reshape(-1, self.c * 2)


class VisionPolicy(nn.Module):
    def __init__(self, keypoints=8, hidden=128):
        super().__init__()
        self.cnn = nn.Sequential(
            nn.Conv2d(3, 16, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, keypoints, 3, padding=1),
        )
        self.keypoints = SpatialSoftmax(keypoints, SIZE // 2, SIZE // 2)
        self.head = nn.Sequential(
            nn.Linear(2 * keypoints + 6, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 3),
        )

    def features(self, state, image):
        return torch.cat([self.keypoints(self.cnn(image)), state], dim=1)

    def forward(self, state, image):
        return self.head(self.features(state, image))


def train(args):
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    files = sorted(pathlib.Path(args.episodes).glob("*.mcap"))
    if len(files) < 4:
        raise SystemExit(f"{args.episodes}: {len(files)} episodes; record at least 4 with `skillgraft sim --camera`")
    # Every `stride`-th sample: neighbouring ticks are nearly the same picture, and the CNN's
    # cost is per sample.
    episodes = [tuple(x[:: args.stride] for x in read_episode(f)) for f in files]
    held = max(1, len(episodes) // 10)
    train_eps, val_eps = episodes[held:], episodes[:held]
    s = np.concatenate([e[0] for e in train_eps])
    a = np.concatenate([e[2] for e in train_eps])
    s_mean, s_std = s.mean(0), s.std(0) + 1e-6
    a_mean, a_std = a.mean(0), a.std(0) + 1e-6

    def tensors(eps):
        st = torch.from_numpy(((np.concatenate([e[0] for e in eps]) - s_mean) / s_std).astype(np.float32))
        im = torch.cat([preprocess(e[1]) for e in eps])
        ac = torch.from_numpy(((np.concatenate([e[2] for e in eps]) - a_mean) / a_std).astype(np.float32))
        return st, im, ac

    st, im, ac = tensors(train_eps)
    vst, vim, vac = tensors(val_eps)
    model = VisionPolicy()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = math.ceil(len(st) / args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(args.seed)
    val_mse = float("nan")
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(st), generator=gen)
        total = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * args.batch : (b + 1) * args.batch]
            batch = augment(im[idx], gen, args) if args.augment else im[idx]
            loss = F.mse_loss(model(st[idx], batch), ac[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            val_mse = F.mse_loss(model(vst, vim), vac).item()
        print(f"epoch {epoch + 1}/{args.epochs}: train mse {total / len(st):.5f}, held-out mse {val_mse:.5f}", flush=True)
    stats = dict(s_mean=s_mean, s_std=s_std, a_mean=a_mean, a_std=a_std)
    info = dict(episodes=len(episodes), samples=len(st) + len(vst), epochs=args.epochs, heldout_mse=val_mse)
    raw = np.concatenate([e[1] for e in val_eps])[:2]
    return model, stats, info, (vst[:2], vim[:2], raw)


def rename_tensor(graph, old, new):
    for node in graph.node:
        node.input[:] = [new if i == old else i for i in node.input]
        node.output[:] = [new if o == old else o for o in node.output]


def export(model, path):
    """ONNX with inputs `state` [N,6] and `image` [N,3,64,64], output `action` [N,3], and the
    Concat of keypoints and state named `features` (where skillgraft splits backbone from head)."""
    model.eval()
    example = (torch.zeros(2, 6), torch.zeros(2, 3, SIZE, SIZE))
    buf = io.BytesIO()
    torch.onnx.export(
        model,
        example,
        buf,
        input_names=["state", "image"],
        output_names=["action"],
        dynamic_axes={"state": {0: "N"}, "image": {0: "N"}, "action": {0: "N"}},
        opset_version=OPSET,
        dynamo=False,
    )
    proto = onnx.load_from_string(buf.getvalue())
    concat = [n for n in proto.graph.node if n.op_type == "Concat" and "state" in n.input]
    if len(concat) != 1:
        raise SystemExit(f"expected one Concat of keypoints and state in the exported graph, found {len(concat)}")
    rename_tensor(proto.graph, concat[0].output[0], "features")
    proto.producer_name = "skillgraft tools/train_vision.py"
    proto.producer_version = torch.__version__
    onnx.checker.check_model(proto)
    path.write_bytes(proto.SerializeToString())


def augmentation(args):
    if not args.augment:
        return "none"
    return (
        f"shift {args.aug_shift}, turn {args.aug_turn_deg} deg, zoom {args.aug_zoom}, colour {args.aug_colour}"
    )


def fmt(v):
    return "[" + ", ".join(repr(float(x)) for x in v) + "]"


def manifest(stats, info, args):
    return f'''# skillgraft skill manifest; the format is described in docs/skill-format.md
name = "reach-arm-a-vision"
version = "1.0.0"
description = "Reach the target the camera sees with a 3-joint planar arm (learnt on the simulated arm-a's camera)"

[provenance]
source_robot = "arm-a"
method = "trained"

[provenance.details]
trainer = "tools/train_vision.py"
torch = "{torch.__version__}"
episodes = {info["episodes"]}
samples = {info["samples"]}
epochs = {info["epochs"]}
stride = {args.stride}
threads = {args.threads}
augment = "{augmentation(args)}"
seed = {args.seed}
heldout_mse = {info["heldout_mse"]!r}

[model]
file = "policy.onnx"
input = "state"
output = "action"
features = "features"

[control]
rate_hz = 50.0
history = 1

[[observation]]
topic = "/joint_states"
type = "sensor_msgs/msg/JointState"
fields = ["position", "velocity"]
joints = ["shoulder", "elbow", "wrist"]
mean = {fmt(stats["s_mean"])}
std = {fmt(stats["s_std"])}
max_age_ms = 100.0

[[image]]
topic = "/camera/image_raw"
type = "sensor_msgs/msg/Image"
input = "image"
width = {SIZE}
height = {SIZE}
channels = "rgb"
encodings = ["rgb8", "bgr8"]
resize = "bilinear"
scale = {1 / 255!r}
mean = [{IMAGE_MEAN}, {IMAGE_MEAN}, {IMAGE_MEAN}]
std = [{IMAGE_STD}, {IMAGE_STD}, {IMAGE_STD}]
layout = "nchw"
max_age_ms = 100.0

[action]
topic = "/arm/cmd"
type = "std_msgs/msg/Float64MultiArray"
fields = ["data[0..3]"]
mean = {fmt(stats["a_mean"])}
std = {fmt(stats["a_std"])}
lower = [-2.0, -2.0, -2.0]
upper = [2.0, 2.0, 2.0]
max_delta = [1.0, 1.0, 1.0]
safe = "zero"
'''


def probe(onnx_path, sample, out):
    """onnxruntime's action and features on held-out inputs, for the Rust tests: tract must agree,
    and skillgraft's preprocessing of the raw camera frames must give these image tensors."""
    st, im, raw = sample
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    action = sess.run(["action"], {"state": st.numpy(), "image": im.numpy()})[0]
    model = onnx.load(str(onnx_path))
    model.graph.output.append(onnx.helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, None))
    feats = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["features"], {"state": st.numpy(), "image": im.numpy()}
    )[0]
    out.write_text(
        json.dumps(
            {
                "state": st.numpy().tolist(),
                "camera": {"height": int(raw.shape[1]), "width": int(raw.shape[2]), "rgb8": [r.tobytes().hex() for r in raw]},
                "image": im.numpy().reshape(len(im), -1).tolist(),
                "action": action.tolist(),
                "features": feats.tolist(),
            }
        )
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("episodes", help="folder of arm-a episodes recorded with `skillgraft sim --camera`")
    p.add_argument("--out", default="skills/reach-arm-a-vision", help="skill folder to write (replaced)")
    p.add_argument("--probe", default=None, help="write onnxruntime's outputs on held-out inputs (JSON) here")
    p.add_argument("--epochs", type=int, default=24)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--stride", type=int, default=1, help="train on every N-th tick of each episode")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="train on the frames as recorded")
    p.add_argument("--aug-shift", type=float, default=0.08, help="largest shift, fraction of half the image")
    p.add_argument("--aug-turn-deg", type=float, default=5.0, help="largest turn, degrees")
    p.add_argument("--aug-zoom", type=float, default=0.06, help="largest zoom, fraction")
    p.add_argument("--aug-colour", type=float, default=0.1, help="largest colour gain change, fraction")
    p.add_argument("--check-reproducible", action="store_true", help="train twice and compare the ONNX bytes")
    args = p.parse_args()
    out = pathlib.Path(args.out)
    model, stats, info, sample = train(args)
    with tempfile.TemporaryDirectory() as tmp:
        staged = pathlib.Path(tmp) / "skill"
        staged.mkdir()
        export(model, staged / "policy.onnx")
        (staged / "skill.toml").write_text(manifest(stats, info, args))
        digest = hashlib.sha256((staged / "policy.onnx").read_bytes()).hexdigest()
        if args.check_reproducible:
            again, _, _, _ = train(args)
            export(again, pathlib.Path(tmp) / "again.onnx")
            same = (pathlib.Path(tmp) / "again.onnx").read_bytes() == (staged / "policy.onnx").read_bytes()
            print(f"reproducible: {'same bytes' if same else 'DIFFERENT bytes'} (sha256 {digest})")
            if not same:
                sys.exit(1)
        if args.probe:
            probe(staged / "policy.onnx", sample, pathlib.Path(args.probe))
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(staged, out)
    print(f"wrote {out} (policy.onnx sha256 {digest}, held-out mse {info['heldout_mse']:.5f})")


if __name__ == "__main__":
    main()
