"""Shared pieces of the detector build scripts: a small ONNX graph builder, the detection
head every vigil detector ends with (NonMaxSuppression, then contract rows
`[batch_index, class_id, score, x1, y1, x2, y2]`), and for the MediaPipe TFLite detectors the
conversion with a dynamic batch and the worker's letterbox."""
import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vigil_tools import geometry  # the worker's pixel geometry


class Graph:
    """Collects nodes and initializers; names outputs automatically."""

    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0
        self.names = set()

    def const(self, name, array):
        if name not in self.names:
            self.inits.append(numpy_helper.from_array(np.asarray(array), name=name))
            self.names.add(name)
        return name

    def node(self, op, inputs, name=None, **attrs):
        self.n += 1
        out = name or f"{op.lower()}_{self.n}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"n{self.n}_{op}", **attrs))
        return out

    def i64(self, name, values):
        return self.const(name, np.array(values, np.int64))


def add_detections(g, boxes, scores, keep, iou, min_score, output="detections"):
    """boxes [N, P, 4] as x1 y1 x2 y2 (normalised), scores [N, 1, P] for the single class:
    appends NMS and the gather into `output` [K, 7]."""
    yx = g.node("Gather", [boxes, g.i64("yx_order", [1, 0, 3, 2])], axis=2)
    sel = g.node("NonMaxSuppression", [
        yx, scores, g.i64("nms_keep", [keep]), g.const("nms_iou", np.array([iou], np.float32)),
        g.const("nms_min_score", np.array([min_score], np.float32))], center_point_box=0)
    ax1 = g.i64("head_ax1", [1])
    b_idx = g.node("Slice", [sel, g.i64("head_0", [0]), g.i64("head_1", [1]), ax1])
    box_idx = g.node("Slice", [sel, g.i64("head_2", [2]), g.i64("head_3", [3]), ax1])
    bi = g.node("Concat", [b_idx, box_idx], axis=1)  # [K, 2]
    score_k = g.node("GatherND", [g.node("Squeeze", [scores, ax1]), bi])  # [K]
    box_k = g.node("GatherND", [boxes, bi])  # [K, 4]
    b_f = g.node("Cast", [b_idx], to=TensorProto.FLOAT)
    class0 = g.node("Mul", [b_f, g.const("head_zero", np.float32(0.0))])
    g.node("Concat", [b_f, class0, g.node("Unsqueeze", [score_k, ax1]), box_k], name=output, axis=1)
    return output


def manifest(name, version, file, digest, source, licence, notes, size, layout, channels, mean, std,
             resize="stretch", labels=("face",), default=False):
    lab = ", ".join(f'"{l}"' for l in labels)
    return f'''name = "{name}"
default = {"true" if default else "false"}
version = "{version}"
file = "{file}"
sha256 = "{digest}"
task = "detect"
labels = [{lab}]
source = "{source}"
licence = "{licence}"
notes = "{notes}"

[input]
name = "image"
width = {size}
height = {size}
layout = "{layout}"
channels = "{channels}"
mean = [{", ".join(str(float(m)) for m in mean)}]
std = [{", ".join(str(float(s)) for s in std)}]
resize = "{resize}"

[output]
name = "detections"
'''


def manifest_wh(name, version, file, digest, source, licence, notes, width, height, layout,
                channels, mean, std, resize="stretch", labels=("face",), default=False,
                input_name="image"):
    """Like `manifest`, for a non-square input and a graph input not named `image`."""
    text = manifest(name, version, file, digest, source, licence, notes, width, layout, channels,
                    mean, std, resize=resize, labels=labels, default=default)
    return (text.replace('name = "image"\n', f'name = "{input_name}"\n', 1)
                .replace(f"height = {width}\n", f"height = {height}\n", 1))


def convert_tflite(path, out, reshape_ranks):
    """Converts a TFLite detector with tf2onnx (opset 13) and gives it a dynamic batch: every
    constant Reshape target of one of `reshape_ranks` whose first dimension is a fixed 1 gets 0
    (copy the input's batch), and the graph's inputs and outputs get batch dimension `N`.
    Returns the model and how many Reshapes were patched."""
    subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--tflite", path, "--opset", "13",
                    "--output", out], check=True, capture_output=True)
    m = onnx.load(out)
    inits = {i.name: i for i in m.graph.initializer}
    patched = 0
    for node in m.graph.node:
        if node.op_type == "Reshape" and node.input[1] in inits:
            shape = numpy_helper.to_array(inits[node.input[1]])
            if len(shape) in reshape_ranks and shape[0] == 1:
                shape = shape.copy()
                shape[0] = 0
                inits[node.input[1]].CopyFrom(numpy_helper.from_array(shape, node.input[1]))
                patched += 1
    for v in list(m.graph.input) + list(m.graph.output):
        v.type.tensor_type.shape.dim[0].dim_param = "N"
    return m, patched


def letterbox(img, width, height):
    """The worker's letterbox (src/decode/image.rs) of a BGR image into width x height: aspect
    kept, rounded size, INTER_LINEAR, centred on black. Returns the BGR uint8 canvas and where
    the image lies in it, (x, y, w, h)."""
    import cv2

    h, w = img.shape[:2]
    rw, rh, x, y = geometry.letterbox_fit(w, h, width, height)
    canvas = np.zeros((height, width, 3), np.uint8)
    canvas[y:y + rh, x:x + rw] = cv2.resize(img, (rw, rh), interpolation=cv2.INTER_LINEAR)
    return canvas, (x, y, rw, rh)


def letterbox_rgb(img, size):
    """`letterbox` into a size x size square, as RGB uint8 (the MediaPipe detectors' order)."""
    import cv2

    return cv2.cvtColor(letterbox(img, size, size)[0], cv2.COLOR_BGR2RGB)


def canonical_names(model):
    """Renames initializers `const_<i>` in order of first use, drops unused ones, and names
    tf2onnx's symbolic dimensions (`unk__<counter>`) `N`. tf2onnx's names depend on the run and
    on what the process converted before; this makes the file, and its sha256, reproducible."""
    for v in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        for dim in v.type.tensor_type.shape.dim:
            if dim.dim_param.startswith("unk__"):
                dim.dim_param = "N"
    inits = {i.name: i for i in model.graph.initializer}
    new, order = {}, []
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name in inits:
                if name not in new:
                    new[name] = f"const_{len(new)}"
                    order.append(name)
                node.input[k] = new[name]
    kept = []
    for name in order:
        inits[name].name = new[name]
        kept.append(inits[name])
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model
