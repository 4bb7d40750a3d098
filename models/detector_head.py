"""Shared pieces of the detector build scripts: a small ONNX graph builder and the detection
head every vigil detector ends with (NonMaxSuppression, then contract rows
`[batch_index, class_id, score, x1, y1, x2, y2]`)."""
import numpy as np
from onnx import TensorProto, helper, numpy_helper


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
