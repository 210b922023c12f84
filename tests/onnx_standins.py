"""Tiny stand-in ONNX models shaped like insightface's buffalo_l pack, built locally with `onnx`.

The real `det_10g.onnx` / `w600k_r50.onnx` weights cannot be downloaded here (and carry a non-commercial
licence), so tests build graphs with the same interface: insightface's model router, SCRFD and ArcFaceONNX
classes load and run them for real. They are not face models:

- detector (like SCRFD det_10g: input `input.1` [1, 3, ?, ?], nine outputs = scores, boxes and 5-point key
  points for strides 8, 16, 32, two anchors per cell): a stride-32 cell scores high when it is bright
  (mean channel value >= ~0.7 after SCRFD's normalisation), so a bright 32x32 square aligned to the 32-px grid
  of a 640x640 image is one "face" with a 128x128 box centred on the square's top-left corner;
- recogniser (like ArcFace w600k_r50: input [None, 3, 112, 112], one 512-d output): an 8x8 average pool and a
  fixed random projection, so different crops give different vectors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

OPSET = 17
# Key points around the anchor centre, in stride units (eyes, nose, mouth corners).
KEYPOINT_OFFSETS = [-0.6, -0.4, 0.6, -0.4, 0.0, 0.2, -0.5, 0.8, 0.5, 0.8]


def build_detector(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    nodes, inits, outputs = [], [], {"score": [], "bbox": [], "kps": []}

    def const(name: str, values, shape) -> str:
        inits.append(helper.make_tensor(name, TensorProto.FLOAT, shape, np.asarray(values, np.float32).ravel()))
        return name

    inits.append(helper.make_tensor("flat_shape", TensorProto.INT64, [2], [-1, 1]))
    for stride in (8, 16, 32):
        s = str(stride)
        nodes += [
            helper.make_node(
                "AveragePool", ["input.1"], [f"pool{s}"], kernel_shape=[stride, stride], strides=[stride, stride]
            ),
            helper.make_node("ReduceMean", [f"pool{s}"], [f"mean{s}"], axes=[1], keepdims=1),
            helper.make_node("Mul", [f"mean{s}", const(f"gain{s}", [20.0 if stride == 32 else 0.0], [])], [f"g{s}"]),
            helper.make_node(
                "Add", [f"g{s}", const(f"bias{s}", [-12.0 if stride == 32 else -20.0], [])], [f"logit{s}"]
            ),
            helper.make_node("Sigmoid", [f"logit{s}"], [f"sig{s}"]),
            helper.make_node("Transpose", [f"sig{s}"], [f"nhwc{s}"], perm=[0, 2, 3, 1]),
            helper.make_node("Concat", [f"nhwc{s}", f"nhwc{s}"], [f"anchors{s}"], axis=3),
            helper.make_node("Reshape", [f"anchors{s}", "flat_shape"], [f"score_{s}"]),
            helper.make_node("Mul", [f"score_{s}", const(f"zero{s}", [0.0], [])], [f"z{s}"]),
            helper.make_node("Add", [f"z{s}", const(f"box{s}", [2.0, 2.0, 2.0, 2.0], [1, 4])], [f"bbox_{s}"]),
            helper.make_node("Add", [f"z{s}", const(f"kp{s}", KEYPOINT_OFFSETS, [1, 10])], [f"kps_{s}"]),
        ]
        for kind in outputs:
            outputs[kind].append(f"{kind}_{s}")
    width = {"score": 1, "bbox": 4, "kps": 10}
    graph = helper.make_graph(
        nodes,
        "standin_scrfd",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])],
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", width[kind]])
            for kind in ("score", "bbox", "kps")
            for name in outputs[kind]
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def build_recogniser(path: Path, *, dim: int = 512, seed: int = 0) -> Path:
    import onnx
    from onnx import TensorProto, helper

    weight = np.random.default_rng(seed).standard_normal((3 * 14 * 14, dim)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("AveragePool", ["input.1"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "projection"], ["683"]),
        ],
        "standin_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", dim])],
        [helper.make_tensor("projection", TensorProto.FLOAT, weight.shape, weight.ravel())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def build_pack(root: Path, model: str = "buffalo_l", *, detector: bool = True, recogniser: bool = True) -> Path:
    """`<root>/models/<model>/` with stand-ins named like buffalo_l's files; returns the model folder."""
    folder = root / "models" / model
    folder.mkdir(parents=True, exist_ok=True)
    if detector:
        build_detector(folder / "det_10g.onnx")
    if recogniser:
        build_recogniser(folder / "w600k_r50.onnx")
    return folder


def face_square_image(corners: list[tuple[int, int]], *, tint: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """A black 640x640 RGB image with a bright 32x32 square at each (x, y) corner (multiples of 32)."""
    image = np.zeros((640, 640, 3), np.uint8)
    for x, y in corners:
        image[y : y + 32, x : x + 32] = tint
    return image
