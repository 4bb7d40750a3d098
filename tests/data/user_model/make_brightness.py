"""Builds brightness.onnx, a tiny user model for the tests: a whole-frame classifier that says
whether the lights are on (`bright`) or off (`dark`) from the mean pixel value. It shows that a
model following a manifest runs in vigil without code changes. Run with .venv/bin/python.
"""
import hashlib
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))

nodes = [
    helper.make_node("ReduceMean", ["pixels"], ["mean"], axes=[1, 2, 3], keepdims=0),
    helper.make_node("Unsqueeze", ["mean", "ax1"], ["m1"]),
    helper.make_node("Mul", ["m1", "gain"], ["scaled"]),
    helper.make_node("Add", ["scaled", "bias"], ["logits"]),
    helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
]
inits = [
    numpy_helper.from_array(np.array([1], np.int64), "ax1"),
    numpy_helper.from_array(np.array([[-20.0, 20.0]], np.float32), "gain"),
    numpy_helper.from_array(np.array([10.0, -10.0], np.float32), "bias"),
]
graph = helper.make_graph(
    nodes, "brightness",
    [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 3, 32, 32])],
    [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])], inits)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="vigil-tests")
model.ir_version = 8
onnx.checker.check_model(model)
path = os.path.join(HERE, "brightness.onnx")
onnx.save(model, path)
digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
open(os.path.join(HERE, "brightness.toml"), "w").write(f'''# A user model for the tests: are the lights on? (mean pixel value; made by make_brightness.py)
name = "brightness"
version = "1"
file = "brightness.onnx"
sha256 = "{digest}"
task = "classify"
labels = ["dark", "bright"]
source = "tests/data/user_model/make_brightness.py"
licence = "MIT (this project)"

[input]
name = "pixels"
width = 32
height = 32
layout = "NCHW"
channels = "RGB"
mean = [0.0, 0.0, 0.0]
std = [255.0, 255.0, 255.0]

[output]
name = "probabilities"
''')
print("wrote", path, digest)
