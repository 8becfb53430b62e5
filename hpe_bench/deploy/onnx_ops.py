"""Exporter extensions for ops the TorchScript ONNX exporter cannot translate.

``aten::linalg_inv`` and ``aten::linalg_solve`` have no ONNX operator. The nets only invert 3x3 matrices (TRG
and OpNet's camera outputs invert the crop map ``A``; OpNet back-projects through ``K``), so the symbolics
below write the closed-form 3x3 inverse (cyclic cofactors over the determinant) with standard ONNX ops; any
runtime can execute it.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


def _sizes(x) -> list | None:
    """Static sizes known to the tracer, ``None`` for dynamic axes (e.g. ``[None, 3, 3]``)."""
    t = x.type()
    return t.varyingSizes() if t.kind() == "TensorType" and t.dim() is not None else None


def _linalg_inv_3x3(g, A):
    """ONNX graph of ``inv(A)`` for ``A (..., 3, 3)``: ``inv[j][i] = C[i][j] / det``, with the cyclic cofactor
    ``C[i][j] = a[i+1][j+1] a[i+2][j+2] - a[i+1][j+2] a[i+2][j+1]`` (indices mod 3; the sign is built in)."""
    sizes = _sizes(A)
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


def _linalg_det_small(g, A):
    """``det(A)`` for ``A (..., 2, 2)`` or ``(..., 3, 3)`` in closed form: ONNX Runtime's ``Det`` has no float64
    kernel, and the camera-frame conversions compute in float64."""
    sizes = _sizes(A)
    n = sizes[-1] if sizes else None
    if n not in (2, 3):
        raise NotImplementedError(f"ONNX export of linalg.det supports (..., 2, 2) and (..., 3, 3), got {sizes}")

    def idx(i: int):
        return g.op("Constant", value_t=torch.tensor(i, dtype=torch.long))

    rows = [g.op("Gather", A, idx(i), axis_i=-2) for i in range(n)]
    a = [[g.op("Gather", r, idx(j), axis_i=-1) for j in range(n)] for r in rows]
    if n == 2:
        return g.op("Sub", g.op("Mul", a[0][0], a[1][1]), g.op("Mul", a[0][1], a[1][0]))
    terms = [g.op("Mul", a[0][j], g.op("Sub", g.op("Mul", a[1][(j + 1) % 3], a[2][(j + 2) % 3]),
                                        g.op("Mul", a[1][(j + 2) % 3], a[2][(j + 1) % 3]))) for j in range(3)]
    return g.op("Add", g.op("Add", terms[0], terms[1]), terms[2])


def _linalg_solve_3x3(g, A, B, left=None):
    """``solve(A, B) = inv(A) @ B`` for ``A (..., 3, 3)`` and ``B (..., 3, K)`` or a vector ``B (..., 3)``."""
    rank_a, rank_b = A.type().dim(), B.type().dim()
    inv = _linalg_inv_3x3(g, A)
    if rank_a is not None and rank_b == rank_a - 1:  # vector right-hand side
        axis = g.op("Constant", value_t=torch.tensor([-1], dtype=torch.long))
        return g.op("Squeeze", g.op("MatMul", inv, g.op("Unsqueeze", B, axis)), axis)
    if rank_a is None or rank_b != rank_a:
        raise NotImplementedError(f"ONNX export of linalg.solve: unsupported ranks A {rank_a}, B {rank_b}")
    return g.op("MatMul", inv, B)


SYMBOLICS = {"aten::linalg_inv": _linalg_inv_3x3, "aten::linalg_solve": _linalg_solve_3x3,
             "aten::linalg_det": _linalg_det_small}


@contextmanager
def export_symbolics(opset: int) -> Iterator[None]:
    """Register the extensions for one export, then remove them (the registry is global)."""
    for name, fn in SYMBOLICS.items():
        torch.onnx.register_custom_op_symbolic(name, fn, opset)
    try:
        yield
    finally:
        for name in SYMBOLICS:
            torch.onnx.unregister_custom_op_symbolic(name, opset)
