"""The curvature memory of :mod:`probes._lbfgs` (private): the last few L-BFGS pairs
of every problem of a batch, and the inverse-Hessian product they define.

The approximation is the compact L-BFGS form (Byrd, Nocedal & Schnabel 1994,
Nocedal & Wright eq. 7.24) with seed ``H0 = gamma * diag(precond)``: a fixed
diagonal preconditioner scaled by the usual ``s.y / y.Dy`` factor. With
``W = [S; D Y]`` (2m rows) and ``R`` the upper triangle of ``S Y^T`` in time
order, a product ``H g`` is two thin products with ``W`` and three with m x m
matrices (see :meth:`CurvaturePairs.product`). ``R^-1`` is updated by one
column per push instead of refactorised.

On the CPU, at the sizes a probe solves, a step costs tensor-op dispatch, not
arithmetic, so the pairs sit in fixed buffers written in place, every view a
step uses is made once, and every product with a vector is written as a row
vector times a matrix (torch's batched matrix-times-column path is slower).
"""

from __future__ import annotations

import torch

__all__ = ["CurvaturePairs"]

_MASKS: dict[tuple[int, torch.dtype, torch.device], tuple[list, list]] = {}


def _masks(size: int, dtype: torch.dtype, device: torch.device) -> tuple[list, list]:
    """Per slot, kept for the process: the (size, size) mask whose ``[i, j]`` is 1 when
    slot ``i``'s pair is no newer than slot ``j``'s, with that slot written next (``R``'s
    upper triangle in slot order), and the (1, size, 1) mask that zeroes its row of
    ``R^-1``."""
    key = (size, dtype, device)
    if key not in _MASKS:
        slots = torch.arange(size)
        ages = [(slots - pos) % size for pos in range(size)]
        eye = torch.eye(size, dtype=dtype, device=device)
        _MASKS[key] = (
            [(age[:, None] <= age).to(device=device, dtype=dtype) for age in ages],
            [(1.0 - eye[j])[None, :, None] for j in range(size)],
        )
    return _MASKS[key]


class CurvaturePairs:
    """The last ``size`` curvature pairs ``(s, y)`` of each of ``nb`` problems and the
    compact-form matrices built from them, kept across the solves of related
    objectives (a regularisation path): see :meth:`retarget`.

    The pairs sit in ring buffers: slot ``pos`` is written next, and the slots
    from ``pos`` on run from the oldest pair to the newest. An empty slot, and a
    rejected pair (``s.y`` not safely positive: round-off, or a finished
    problem), hold zeros with a unit diagonal in ``R``: they add nothing.
    ``R^-1`` is kept in slot order. A push replaces the oldest pair: the inverse
    of a triangle without its first row and column is the rest of its inverse,
    and appending a pair is one step of back substitution, so a push updates
    one column of ``R^-1`` and factorises nothing.
    """

    def __init__(self, nb: int, dim: int, size: int, like: torch.Tensor):
        self.size, self.pos = size, 0
        self.w = like.new_zeros(nb, 2 * size, dim)  # [S; D Y], slot order
        self.y = like.new_zeros(nb, size, dim)
        # [S Y^T; D Y Y^T] (B, 2m, m), held as its transpose: Y [S; D Y]^T is the faster
        # product to refresh (torch's bmm against a transposed (P, 2m) operand is 1.5x
        # faster than against a transposed (P, m) one at these sizes).
        self.prods_t = like.new_zeros(nb, size, 2 * size)
        self.rinv = torch.eye(size, dtype=like.dtype, device=like.device).repeat(nb, 1, 1)
        self.d_flat = like.new_ones(1, dim)
        self._views()

    def _views(self) -> None:
        """The views every step reads, made once: they follow the buffers' in-place writes."""
        m = self.size
        self.w_t, self.rinv_t = self.w.transpose(1, 2), self.rinv.transpose(1, 2)
        self.prods = self.prods_t.transpose(1, 2)
        sy = self.prods[:, :m]
        self.ydy = self.prods[:, m:]
        self.diag = torch.diagonal(sy, dim1=1, dim2=2).unsqueeze(1)  # (B, 1, m): s_i.y_i
        self._ydy_diag = torch.diagonal(self.ydy, dim1=1, dim2=2)  # (B, m): y_i.D y_i
        self._slots: list[tuple | None] = [None] * m  # per slot, made at its first use
        self._rinv_diag_all = torch.diagonal(self.rinv, dim1=1, dim2=2)
        self._one = self.w.new_ones(())
        # Scratch rows every push and product write into, with their views: each op saved
        # is a few microseconds of a step that costs a few dozen of them.
        nb = self.w.shape[0]
        self._c = self.w.new_empty(nb, 1, 2 * m)  # the new y against [S; D Y]
        self._c_sy = self._c[:, :, :m]
        self._c_row = self._c[:, 0]
        self._col = self.w.new_empty(nb, 1, m)
        self._col_row = self._col[:, 0]
        self._pq = self.w.new_empty(nb, 1, 2 * m)  # [S g; D Y g]
        self._p, self._q = self._pq[:, :, :m], self._pq[:, :, m:]
        self._coef = self.w.new_empty(nb, 1, 2 * m)
        self._coef_s, self._coef_y = self._coef[:, :, :m], self._coef[:, :, m:]

    def _slot_views(self, j: int) -> tuple:
        """Slot ``j``'s views: where s, D y and y go, y as a row, column j of
        [S Y^T; D Y Y^T], row j of D Y Y^T (symmetric: the same values) and column j's
        lower half, column j and diagonal entry j of R^-1, and the mask of the other rows."""
        views = self._slots[j]
        if views is None:
            m = self.size
            views = self._slots[j] = (
                self.w[:, j],
                self.w[:, m + j],
                self.y[:, j],
                self.y[:, j : j + 1],
                self.prods[:, :, j],
                self.ydy[:, j],
                self.prods[:, m:, j],
                self.rinv[:, :, j],
                self._rinv_diag_all[:, j],
                _masks(m, self.w.dtype, self.w.device)[1][j],
            )
        return views

    def retarget(self, d_flat: torch.Tensor, shift: torch.Tensor | None = None) -> None:
        """Serve a new objective with diagonal preconditioner ``d_flat`` (1, P).

        ``shift`` (1, P) adds ``shift * s`` to every stored ``y``: exact when the
        new objective differs from the old by a quadratic term with that
        diagonal Hessian (a changed L2 strength). Pairs whose ``s.y`` is no
        longer safely positive (not above ``1e-10 y.Dy``) are dropped, and
        ``R^-1`` is refactorised.
        """
        m = self.size
        s = self.w[:, :m]
        if shift is not None:
            self.y.addcmul_(s, shift[:, None])
        torch.mul(self.y, d_flat[:, None], out=self.w[:, m:])
        self.d_flat = d_flat
        torch.bmm(self.y, self.w_t, out=self.prods_t)
        keep = self.diag[:, 0] > 1e-10 * self._ydy_diag  # s.y against y.Dy, per slot
        empty = self.diag[:, 0] == 0
        if not bool((keep | empty).all()):
            k = keep.to(s.dtype).unsqueeze(2)
            self.w.mul_(k.repeat(1, 2, 1))
            self.y.mul_(k)
            torch.bmm(self.y, self.w_t, out=self.prods_t)
        order = _masks(m, s.dtype, s.device)[0][self.pos]
        r = torch.diag_embed((self.diag[:, 0] == 0).to(s.dtype)).addcmul_(self.prods[:, :m], order)
        self.rinv.copy_(torch.linalg.inv(r))

    def snapshot(self, rows: slice) -> tuple:
        """The state of problems ``rows``, copied: :meth:`restore` makes pairs of it."""
        keep = (self.w, self.y, self.prods_t, self.rinv)
        return (self.pos, self.d_flat, *(t[rows].clone() for t in keep))

    @classmethod
    def restore(cls, state: tuple) -> CurvaturePairs:
        """Pairs from a :meth:`snapshot`."""
        out = cls.__new__(cls)
        out.pos, out.d_flat, out.w, out.y, out.prods_t, out.rinv = state
        out.size = out.y.shape[1]
        out._views()
        return out

    def slot(self) -> tuple[torch.Tensor, ...]:
        """Where the next pair goes: ``(s, D y, y)`` views (B, P) of the slot that
        :meth:`commit` completes. Writing the pair straight into them spares a copy."""
        return self._slot_views(self.pos)[:3]

    def commit(self, keep: torch.Tensor, sy: torch.Tensor) -> None:
        """Complete the push of the pair written into :meth:`slot`: zero it for the
        problems where ``keep`` (B,) fails, and update the products and ``R^-1``;
        ``sy`` is the pair's ``s.y`` (B,). It replaces the oldest pair."""
        j, m = self.pos, self.size
        s_slot, dy_slot, y_slot, y_row, prod_col, ydy_row, prod_low, rinv_col, rinv_diag, others = (
            self._slot_views(j)
        )
        if not bool(keep.all()):
            k = keep.to(s_slot.dtype).unsqueeze(1)
            for t in (s_slot, dy_slot, y_slot):
                t.mul_(k)
        self.pos = (j + 1) % m
        # Every stored pair against the new y: column j of S Y^T and of D Y Y^T. Row j of
        # S Y^T (the new s against older y) lies below R's triangle and is not kept.
        torch.bmm(y_row, self.w_t, out=self._c)  # (B, 1, 2m)
        prod_col.copy_(self._c_row)
        ydy_row.copy_(prod_low)
        inv_rho = torch.where(keep, sy, self._one).reciprocal_()
        # Slot j held the oldest pair: its row and column of R^-1 hold only the diagonal.
        self.rinv.mul_(others)
        # Column j of R^-1: -(R'^-1 c) / rho, c = column j of S Y^T.
        torch.bmm(self._c_sy, self.rinv_t, out=self._col)
        torch.mul(self._col_row, inv_rho.unsqueeze(1), out=rinv_col).neg_()
        rinv_diag.copy_(inv_rho)

    def product(self, grad: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """``H g`` per problem (Nocedal & Wright eq. 7.24) for ``grad`` (B, P).

        With ``p = S g``, ``q = Y D g`` and ``a = R^-1 p``:
        ``H g = gamma D g + S^T b - gamma (D Y)^T a``, where
        ``b = R^-T ((diag(s.y) + gamma Y D Y^T) a - gamma q)``.
        """
        g3 = gamma.view(-1, 1, 1)
        g_row = grad.unsqueeze(1)
        torch.bmm(g_row, self.w_t, out=self._pq)  # p and q, (B, 1, m) each
        a = torch.bmm(self._p, self.rinv_t)
        t = torch.baddbmm(self._q, a, self.ydy, beta=-1).mul_(g3).addcmul_(a, self.diag)
        torch.bmm(t, self.rinv, out=self._coef_s)
        torch.mul(a, g3, out=self._coef_y).neg_()
        hg = torch.mul(g_row, self.d_flat).mul_(g3)
        return torch.baddbmm(hg, self._coef, self.w).squeeze(1)
