"""Exporter extensions for ops the TorchScript ONNX exporter cannot translate.

``aten::linalg_inv`` has no ONNX operator. The nets only invert 3x3 matrices (TRG inverts the crop map ``A``
to bring its landmarks back to full-image pixels), so the symbolic below writes the closed-form 3x3 inverse
(cyclic cofactors over the determinant) with standard ONNX ops; any runtime can execute it.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


def _linalg_inv_3x3(g, A):
    """ONNX graph of ``inv(A)`` for ``A (..., 3, 3)``: ``inv[j][i] = C[i][j] / det``, with the cyclic cofactor
    ``C[i][j] = a[i+1][j+1] a[i+2][j+2] - a[i+1][j+2] a[i+2][j+1]`` (indices mod 3; the sign is built in)."""
    sizes = A.type().sizes() if A.type().kind() == "TensorType" else None
    if sizes is not None and None not in sizes[-2:] and tuple(sizes[-2:]) != (3, 3):
        raise NotImplementedError(f"ONNX export of linalg.inv supports (..., 3, 3) matrices only, got {sizes}")

    def idx(i: int):
        return g.op("Constant", value_t=torch.tensor(i, dtype=torch.long))

    rows = [g.op("Gather", A, idx(i), axis_i=-2) for i in range(3)]  # (..., 3)
    a = [[g.op("Gather", r, idx(j), axis_i=-1) for j in range(3)] for r in rows]  # (...)

    def cofactor(i: int, j: int):
        i1, i2, j1, j2 = (i + 1) % 3, (i + 2) % 3, (j + 1) % 3, (j + 2) % 3
        return g.op("Sub", g.op("Mul", a[i1][j1], a[i2][j2]), g.op("Mul", a[i1][j2], a[i2][j1]))

    C = [[cofactor(i, j) for j in range(3)] for i in range(3)]
    det = g.op("Add", g.op("Add", g.op("Mul", a[0][0], C[0][0]), g.op("Mul", a[0][1], C[0][1])),
               g.op("Mul", a[0][2], C[0][2]))
    last = g.op("Constant", value_t=torch.tensor([-1], dtype=torch.long))
    second_last = g.op("Constant", value_t=torch.tensor([-2], dtype=torch.long))
    inv_rows = []
    for j in range(3):  # row j of the inverse = column j of C
        entries = [g.op("Unsqueeze", g.op("Div", C[i][j], det), last) for i in range(3)]
        inv_rows.append(g.op("Unsqueeze", g.op("Concat", *entries, axis_i=-1), second_last))
    return g.op("Concat", *inv_rows, axis_i=-2)


@contextmanager
def export_symbolics(opset: int) -> Iterator[None]:
    """Register the extensions for one export, then remove them (the registry is global)."""
    torch.onnx.register_custom_op_symbolic("aten::linalg_inv", _linalg_inv_3x3, opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::linalg_inv", opset)
