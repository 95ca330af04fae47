"""ONNX Runtime writes no telemetry database into the server's HOME (its Linux builds queue
events there for upload to Microsoft unless switched off)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import onnx
from onnx import TensorProto, helper


def _identity_model(path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=9)
    onnx.save(model, path)


def test_an_onnx_session_writes_nothing_into_home(tmp_path: Path) -> None:
    model = tmp_path / "identity.onnx"
    _identity_model(model)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env["HOME"] = str(home)
    script = (
        "import egemma, onnxruntime as ort, sys; "
        "ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])"
    )
    subprocess.run([sys.executable, "-c", script, str(model)], env=env, check=True, timeout=120)
    assert [p for p in home.rglob("*") if p.is_file()] == []
