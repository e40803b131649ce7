"""The last linear layer of an exported model (``torch.export`` ``.pt2``, ONNX): read, replace.

A repair (:mod:`debias.refit`) needs three things of a classifier: the features its last linear
layer reads, that layer's weights, and a copy of the model with new weights. For a model file:

- ``.pt2``: the last ``aten.linear`` call of the program's graph; its input is caught while the
  program runs (an ``fx`` interpreter), its weight and bias are the program's parameters, and the
  repaired program is the same graph with those two tensors replaced;
- ONNX: the last ``Gemm`` node; its input ``A`` is added as an extra graph output to read it,
  and the repaired file is the same graph with its ``B`` and ``C`` initializers replaced.

Both are loaded as the audit loads them (a ``.pt2`` holding pickles is refused unread). Inputs
are float images already normalised for the model, ``(B, 3, S, S)``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from debias import errors
from debias.predict import export_side, load_program

BATCH = 256


class ExportLayer:
    """The last ``aten.linear`` of a ``torch.export`` program."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.program = load_program(path)
        self.module = self.program.module()
        linears = [n for n in self.module.graph.nodes if _is_linear(n)]
        if not linears:
            raise errors.RunError(errors.NO_LAST_LINEAR.format(path=path, what="aten.linear call"))
        self.node = linears[-1]
        self.weight_name = self.node.args[1].target  # a get_attr of the parameter's name
        bias = self.node.args[2] if len(self.node.args) > 2 else None
        self.bias_name = bias.target if bias is not None else None
        self.side = export_side(self.program)  # the image side it was exported with, if known

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> np.ndarray:
        """Return what the last linear layer reads for each image, ``(N, D)``."""
        out = []
        for start in range(0, len(x), BATCH):
            catcher = _Catch(self.module, self.node)
            catcher.run(x[start : start + BATCH])
            out.append(catcher.caught.double().cpu().numpy())
        return np.concatenate(out)

    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the layer's weights ``(C, D)`` and biases ``(C,)``."""
        state = self.program.state_dict
        w = state[self.weight_name].detach().double().numpy()
        b = state[self.bias_name].detach().double().numpy() if self.bias_name else np.zeros(len(w))
        return w, b

    def save(self, out: Path, coef: np.ndarray, intercept: np.ndarray) -> None:
        """Write the program with the layer's weights replaced to ``out``."""
        errors.check_option(
            self.bias_name is not None,
            "model",
            str(self.path),
            "its last linear layer has no bias, and a refit layer needs one",
            "Export the model with bias=True in its last nn.Linear.",
        )
        program = copy.deepcopy(self.program)
        for name, value in ((self.weight_name, coef), (self.bias_name, intercept)):
            old = program.state_dict[name]
            program.state_dict[name] = torch.nn.Parameter(
                torch.from_numpy(value).to(old.dtype), requires_grad=False
            )
        torch.export.save(program, str(out))


def _is_linear(node: Any) -> bool:
    return node.op == "call_function" and str(node.target) == "aten.linear.default"


class _Catch(torch.fx.Interpreter):
    """Run a graph module and keep the input of one node."""

    def __init__(self, module: torch.nn.Module, node: Any) -> None:
        super().__init__(module)
        self.node, self.caught = node, torch.zeros(0)

    def run_node(self, n: Any) -> Any:  # noqa: D102
        if n is self.node:
            self.caught = self.env[n.args[0]]
        return super().run_node(n)


class OnnxLayer:
    """The last ``Gemm`` node of an ONNX graph."""

    def __init__(self, path: Path) -> None:
        try:
            import onnx
            from onnx import numpy_helper
        except ImportError:
            raise errors.RunError(errors.NO_ONNX.format(path=path)) from None
        self.path, self.numpy_helper = path, numpy_helper
        try:
            self.model = onnx.load(str(path))
        except Exception as exc:  # onnx raises its own types for files it cannot parse
            reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise errors.RunError(errors.NOT_A_MODEL.format(path=path, reason=reason)) from None
        gemms = [n for n in self.model.graph.node if n.op_type == "Gemm"]
        if not gemms:
            raise errors.RunError(errors.NO_LAST_LINEAR.format(path=path, what="Gemm node"))
        self.node = gemms[-1]
        attrs = {a.name: a for a in self.node.attribute}
        self.trans_b = bool(attrs["transB"].i) if "transB" in attrs else False
        self.init = {t.name: t for t in self.model.graph.initializer}
        dims = self.model.graph.input[0].type.tensor_type.shape.dim
        last = dims[-1].dim_value if len(dims) == 4 else 0
        self.side = int(last) if last > 0 else None  # a fixed input side, if the graph has one

    def features(self, x: torch.Tensor) -> np.ndarray:
        """Return what the last ``Gemm`` reads for each image, ``(N, D)``."""
        import onnx
        import onnxruntime

        probe = copy.deepcopy(self.model)
        probe.graph.output.append(onnx.ValueInfoProto(name=self.node.input[0]))
        session = onnxruntime.InferenceSession(
            probe.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        name = session.get_inputs()[0].name
        out = [
            session.run([self.node.input[0]], {name: x[s : s + BATCH].numpy()})[0]
            for s in range(0, len(x), BATCH)
        ]
        return np.concatenate(out).astype(np.float64)

    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the layer's weights ``(C, D)`` and biases ``(C,)``."""
        b = self.numpy_helper.to_array(self.init[self.node.input[1]]).astype(np.float64)
        w = b if self.trans_b else b.T
        c = self.node.input[2] if len(self.node.input) > 2 else None
        bias = self.numpy_helper.to_array(self.init[c]) if c in self.init else np.zeros(len(w))
        return w, np.broadcast_to(bias, (len(w),)).astype(np.float64)

    def save(self, out: Path, coef: np.ndarray, intercept: np.ndarray) -> None:
        """Write the graph with the ``Gemm``'s ``B`` and ``C`` replaced to ``out``."""
        import onnx

        errors.check_option(
            len(self.node.input) > 2 and self.node.input[2] in self.init,
            "model",
            str(self.path),
            "its last Gemm has no bias initializer, and a refit layer needs one",
            "Export the model with bias=True in its last nn.Linear.",
        )
        model = copy.deepcopy(self.model)
        new = {
            self.node.input[1]: coef if self.trans_b else coef.T,
            self.node.input[2]: intercept,
        }
        for i, tensor in enumerate(model.graph.initializer):
            if tensor.name in new:
                dtype = self.numpy_helper.to_array(tensor).dtype
                array = np.ascontiguousarray(new[tensor.name].astype(dtype))
                model.graph.initializer[i].CopyFrom(
                    self.numpy_helper.from_array(array, tensor.name)
                )
        onnx.save(model, str(out))
