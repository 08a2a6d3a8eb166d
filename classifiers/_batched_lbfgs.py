"""The solver behind :func:`classifiers._path.fit_logreg_path`: batched, preconditioned L-BFGS in torch.

- **Batched**: one weight tensor per C, stacked, so each pass over the rows is one matrix product
  for the whole grid; blocks of C run in increasing C, each started from the extrapolation of
  the path's last two solutions (:func:`path_start`).
- **Preconditioned**: with centred features ``X_c`` and ``X_c^T X_c = V diag(lam) V^T``, the
  Hessian approximation ``I + h C X_c^T X_c`` is diagonal in the coordinates ``W = V A``; ``h`` is
  the rows' current mean curvature of the loss (exact at W = 0). Its inverse is the L-BFGS starting
  metric, so the conditioning of the features barely matters. Wide features get the top eigenpairs
  only (:func:`lowrank_spectrum`); fewer rows than dimensions, the exact row-space basis.
- **Small problems** (at most ``METRIC_MAX_P`` parameters: narrow features, few classes): a solve
  still running after ``METRIC_AFTER`` iterations replaces that metric by the Hessian itself
  (:meth:`Problem.hessian`, estimated on at most ``HESSIAN_ROWS`` evenly spaced rows, Cholesky
  factors), refreshed every ``METRIC_AFTER`` iterations. At large C the curvature concentrates on
  the few rows near the class boundaries, where the mean-curvature metric is far off: on digits'
  16-40-dimensional layers, 10 folds per stack, the screen at C >= 1000 took 100-200 iterations
  with it and 12-21 with the Hessian (advise's time: bench/README.md).
- **Line search**: Armijo backtracking to the minimum of the quadratic through the objective's
  value and slope at 0 and its value at the step (within [t/10, t/2]). A step that moves the
  objective by no more than its own rounding (``F32_ROUNDING``: its rows' terms are summed in
  float32) while the slope's own prediction of the decrease is below that rounding too ends the
  problem's descent at once: no shorter step can show a decrease. At C = 1e5 the objective is
  about 1e8 and its last decreases are below its rounding; halving until ``max_ls`` spent 20
  evaluations there (CIFAR-10 at 112 dimensions: 94 evaluations for 24 iterations, now 26).
- **Rows**: held on the device (on a CPU, passed in cache-sized chunks) or, beyond the memory
  budget, streamed from an ``h5py.Dataset`` at every pass (:class:`RowSource`); loss and gradient
  are sums over chunks, so the result is the same.
- **Precision**: passes may multiply in bfloat16 (centred rows and the two products; everything
  else in the solve's dtype; rows held in memory get a bfloat16 copy, half their size again),
  which pays where the device does so natively (:func:`bfloat16_pays`): ``"bfloat16"`` for a
  screen that only ranks C values, ``"mixed"`` for a fit, which then continues in full precision
  until the gradient measured there meets the tolerance (:func:`_lbfgs`).

Its speed against scikit-learn's solvers is in ``bench/README.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transferlab.util import UserInputError

from ._threads import torch_threads
from ._validation import check_features, is_h5

_EVAL_ROWS = 16384  # rows per pass on an accelerator: few large products
# On a CPU, rows (held in memory or streamed) are passed in chunks of about this many bytes: both products
# of a pass (scores, then gradient) then read a chunk while it is still in cache, instead of streaming
# the whole array from memory twice (the products are memory-bound at these shapes).
CPU_CHUNK_BYTES = 4 << 20


def torch_max(a, b):
    import torch

    return torch.maximum(a, b)


PRECISIONS = ("exact", "bfloat16", "mixed")
LOW_MIN_ROWS = 2048  # fewer rows: bfloat16's gradient error is near the default tolerance, and passes are cheap
# fewer dimensions: a pass's elementwise work on the scores (float32 either way), not its two products, sets its
# time, and bfloat16's stalls at large C cost more than its products save (bench/README.md, advise)
LOW_MIN_DIMS = 128


def native_bfloat16(device) -> bool:
    """Whether ``device`` multiplies bfloat16 natively, faster than float32: a CPU with
    AVX512-BF16 or AMX (elsewhere torch emulates bfloat16, slower than float32). Other devices: False."""
    import torch

    if torch.device(device).type != "cpu":
        return False
    cpu = getattr(torch, "cpu", None)
    return any(bool(getattr(cpu, name, lambda: False)()) for name in ("_is_avx512_bf16_supported",
                                                                       "_is_amx_tile_supported"))


def bfloat16_pays(device, rows: int, dims: int | None = None) -> bool:
    """Whether passes in bfloat16 pay off for a solve on ``rows`` rows of ``dims`` features: a native device
    (:func:`native_bfloat16`), at least ``LOW_MIN_ROWS`` rows and ``LOW_MIN_DIMS`` dimensions (None: not
    checked). What ``precision="auto"`` follows."""
    return rows >= LOW_MIN_ROWS and (dims is None or dims >= LOW_MIN_DIMS) and native_bfloat16(device)


STREAM_CHUNK_BYTES = 64 << 20  # rows streamed from disk are read in chunks of at most this many float32 bytes


class RowBlocks:
    """Rows of a 2-D array or ``h5py.Dataset`` that are never read all at once: the rows ``index``
    (sorted, unique; None: all) of ``data``, as float32, passed through ``transform`` (a fitted
    standardiser's ``transform``, say) as they are read.

    ``blocks[a:b]`` gives rows a..b-1 of the selection, :meth:`take` the rows at given positions and
    :meth:`read_into` rows a..b-1 into the caller's buffer. A file is read in aligned blocks of about
    ``block_rows`` rows (whole HDF5 chunks) into one buffer, kept until a row outside it is asked for:
    a pass asking for a few hundred rows at a time reads every block once. Rows are picked and
    converted ``GATHER_ROWS`` at a time (in cache), only those kept. The solver streams it as it
    streams a file (:class:`RowSource`); :func:`~transferlab.classifiers.out_of_core.select_logreg`
    hands it the training and validation rows of a file.
    """

    GATHER_ROWS = 512  # rows picked out of a block and converted at a time: in cache for the steps after

    def __init__(self, data, index=None, transform=None, block_rows: int = 16384):
        if data.ndim != 2:
            raise UserInputError(f"features must be a 2-D array (rows, dims), got shape {data.shape}")
        self.data = data if is_h5(data) else np.asarray(data)
        self.index = None if index is None else np.asarray(index, dtype=np.int64)
        if self.index is not None and self.index.size and (
                np.any(np.diff(self.index) <= 0) or self.index[0] < 0 or self.index[-1] >= data.shape[0]):
            raise ValueError("index must hold sorted, unique row numbers of data")
        self.shape = (int(data.shape[0]) if self.index is None else int(self.index.size), int(data.shape[1]))
        self.ndim = 2
        self.transform = transform
        step = (getattr(data, "chunks", None) or (1,))[0]
        self.block_rows = max(step, int(block_rows) // step * step)
        self._buffer = self._first = None  # a file's block last read, and its first row
        self._picked = None  # GATHER_ROWS rows picked out of a block, in data's dtype

    def __len__(self) -> int:
        return self.shape[0]

    def _block(self, row: int):
        """(first row, rows) of a block of ``data`` holding row ``row``: an array as it is, or a file's aligned
        block read into the buffer (again only when it holds another block)."""
        if not is_h5(self.data):
            return 0, self.data
        first = row // self.block_rows * self.block_rows
        stop = min(int(self.data.shape[0]), first + self.block_rows)
        if self._first != first:
            if self._buffer is None:
                self._buffer = np.empty((self.block_rows, self.shape[1]), dtype=self.data.dtype)
            self._first = None  # a failed read leaves no block behind
            self.data.read_direct(self._buffer, np.s_[first:stop], np.s_[0:stop - first])
            self._first = first
        return first, self._buffer[:stop - first]

    def _gather(self, rows, out=None) -> np.ndarray:
        """Rows ``rows`` (sorted row numbers of ``data``) as float32, transformed, written into ``out``
        (float32, one row per entry of ``rows``; None: a new array), which is returned."""
        import torch

        out = np.empty((rows.size, self.shape[1]), dtype=np.float32) if out is None else out
        done = 0
        while done < rows.size:
            first, block = self._block(int(rows[done]))
            stop = done + int(np.searchsorted(rows[done:], first + block.shape[0]))
            part = rows[done:stop] - first
            fast = block.dtype in (np.float16, np.float32, np.float64) and block.flags.writeable \
                and block.dtype.isnative  # torch converts float16 faster than numpy, and picks rows faster
            if part[-1] - part[0] + 1 == part.size:  # consecutive rows: converted from the block itself
                if fast:
                    torch.from_numpy(out[done:stop]).copy_(torch.from_numpy(block[part[0]:part[-1] + 1]))
                else:
                    out[done:stop] = block[part[0]:part[-1] + 1]
            elif fast:
                source, picks = torch.from_numpy(block), torch.from_numpy(part)
                if self._picked is None or self._picked.dtype != source.dtype:
                    self._picked = torch.empty((self.GATHER_ROWS, self.shape[1]), dtype=source.dtype)
                for lo in range(0, part.size, self.GATHER_ROWS):
                    hi = min(part.size, lo + self.GATHER_ROWS)
                    picked = torch.index_select(source, 0, picks[lo:hi], out=self._picked[:hi - lo])
                    torch.from_numpy(out[done + lo:done + hi]).copy_(picked)
            else:
                out[done:stop] = block[part]
            done = stop
        if self.transform is not None:
            result = np.asarray(self.transform(out), dtype=np.float32)
            if result.ctypes.data != out.ctypes.data or result.strides != out.strides:
                out[...] = result
        return out

    def read_into(self, a: int, b: int, out: np.ndarray) -> np.ndarray:
        """Rows a..b-1 of the selection, as float32 (transformed), written into ``out[:b - a]`` (which
        the caller reuses from one block of rows to the next); returns that view."""
        positions = np.arange(a, b)
        return self._gather(positions if self.index is None else self.index[positions], out[:b - a])

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("RowBlocks takes slices of rows, blocks[a:b]; take() picks rows")
        a, b, _ = key.indices(self.shape[0])
        positions = np.arange(a, max(a, b))
        return self._gather(positions if self.index is None else self.index[positions])

    def take(self, positions) -> np.ndarray:
        """The rows at sorted ``positions`` of the selection, as float32 (transformed)."""
        positions = np.asarray(positions, dtype=np.int64)
        return self._gather(positions if self.index is None else self.index[positions])


def out_of_core(X) -> bool:
    """Whether ``X`` is read from disk chunk by chunk (an ``h5py.Dataset`` or :class:`RowBlocks`)."""
    return is_h5(X) or isinstance(X, RowBlocks)


class RowSource:
    """Rows of an array, ``h5py.Dataset`` or :class:`RowBlocks`, held on the device or streamed.

    Either way a pass yields chunks of ``pass_rows`` rows (:func:`pass_rows`, no more than ``rows``), so a
    streamed pass sums over the same chunks as a held one. Streamed rows are read in blocks of ``rows``
    rows (at most ``STREAM_CHUNK_BYTES`` as float32, whole HDF5 chunks) and converted one chunk at a time
    into buffers of the pass's own: both products of a pass read a chunk while it is in cache."""

    def __init__(self, X, device, memory_budget, dtype):
        import torch

        self.dtype = dtype
        if X.ndim != 2 or X.shape[0] == 0:
            raise UserInputError(f"features must be a non-empty 2-D array, got shape {X.shape}")
        self.n, self.d = (int(s) for s in X.shape)
        self.d_in = self.d  # the features' own dimension; d becomes the basis size after rotate_
        self.device = torch.device(device)
        self._X = X
        self._full = None
        self.low_center = None  # set (the rows' mean): chunks() yields bfloat16(rows - low_center)
        self._full_low = None
        self.pass_rows = min(self.n, pass_rows(self.device, self.d))
        if self.n * self.d * 4 <= memory_budget:
            self._full = torch.as_tensor(check_features(np.asarray(X[0:self.n] if out_of_core(X) else X)))
            self._full = self._full.to(device=self.device, dtype=dtype)
            self.rows = self.pass_rows
        else:
            rows = max(1, int(min(memory_budget, STREAM_CHUNK_BYTES) // (self.d * 4)))
            step = (getattr(X, "chunks", None) or (1,))[0] if is_h5(X) else 1
            self.rows = max(step, rows // step * step)
            self.pass_rows = min(self.pass_rows, self.rows)
            self._blocks = X if isinstance(X, RowBlocks) else RowBlocks(X if is_h5(X) else np.asarray(X),
                                                                        block_rows=self.rows)

    @property
    def streamed(self) -> bool:
        return self._full is None

    def rotate_(self, mu, V) -> bool:
        """Replace rows held in memory by ``(X - mu) V``; False (nothing done) when streamed."""
        if self._full is None:
            return False
        self._full = (self._full - mu) @ V
        self.d = int(V.shape[1])
        self._full_low = None
        return True

    def sample_chunks(self, max_rows):
        """Like :meth:`chunks`, over every ``ceil(n / max_rows)``-th row when the rows are held in
        memory (all rows when streamed); returns (chunks, rows seen)."""
        if self._full is None or self.n <= max_rows:
            return self.chunks(), self.n
        stride = -(-self.n // max_rows)
        rows = self._full[::stride]
        return ((0, 0, rows[i:i + self.rows]) for i in range(0, rows.shape[0], self.rows)), int(rows.shape[0])

    def chunks(self):
        """Yield (start, stop, rows as a tensor on the device) over all rows: in the solve's dtype, or
        centred on ``low_center`` in bfloat16 while that is set (the centring keeps the rounding
        relative to the rows' spread, not to their mean)."""
        import torch

        low = self.low_center is not None
        if low and self._full is not None and self._full_low is None:
            self._full_low = (self._full - self.low_center).to(torch.bfloat16)
        if self._full is not None:
            rows = self._full_low if low else self._full
            for start in range(0, self.n, self.rows):
                yield start, min(self.n, start + self.rows), rows[start:start + self.rows]
            return
        # the pass's own buffers (never the caller's rows, which the centring would change): the consumer
        # is done with a chunk when it asks for the next
        buffer = np.empty((self.pass_rows, self.d_in), dtype=np.float32)
        on_host = self.device.type == "cpu" and self.dtype == torch.float32
        low_buffer = torch.empty((self.pass_rows, self.d_in), dtype=torch.bfloat16) if low and on_host else None
        for start in range(0, self.n, self.pass_rows):
            stop = min(self.n, start + self.pass_rows)
            block = torch.from_numpy(self._blocks.read_into(start, stop, buffer))
            # NaN or inf make the sum so; a finite sum that overflows is told apart by the exact test
            if not bool(torch.isfinite(block.sum())) and not bool(torch.isfinite(block).all()):
                raise UserInputError("features chunk contains NaN or infinite values: re-extract the features")
            block = block if on_host else block.to(device=self.device, dtype=self.dtype)
            if low:
                block = block.sub_(self.low_center)
                block = low_buffer[:stop - start].copy_(block) if on_host else block.to(torch.bfloat16)
            yield start, stop, block


def pass_rows(device, dims: int) -> int:
    """Rows per chunk of a pass over rows of ``dims`` features: on a CPU about ``CPU_CHUNK_BYTES`` of float32
    (both products of a pass read a chunk while it is in cache), on an accelerator ``_EVAL_ROWS``."""
    import torch

    return _EVAL_ROWS if torch.device(device).type != "cpu" else max(256, CPU_CHUNK_BYTES // (dims * 4))


LOWRANK_ROWS = 16384  # the low-rank preconditioner is estimated on at most this many (evenly spaced) rows


def lowrank_spectrum(source, mu, rank, seed=0):
    """Top ``rank`` eigenpairs of the centred Gram by randomized subspace iteration (3 passes),
    and the mean of the remaining eigenvalues.

    Rows held in memory beyond ``LOWRANK_ROWS`` are sampled evenly and the Gram scaled by
    n / rows: it only shapes the preconditioner (the convergence, not the optimum), and the
    set-up no longer grows with the rows.
    """
    import torch

    k = min(rank + 8, source.d, source.n)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    Q = torch.randn(source.d, k, generator=gen, dtype=source.dtype).to(source.device)
    sq = torch.zeros((), dtype=torch.float64, device=source.device)
    for step in range(3):
        Y = torch.zeros_like(Q)
        chunks, seen = source.sample_chunks(LOWRANK_ROWS)
        for _, _, c in chunks:
            c = c - mu
            if step == 0:
                sq += (c * c).sum(dtype=torch.float64)
            Y += c.T @ (c @ Q)
        if step < 2:
            Q = torch.linalg.qr(Y)[0]
    scale = source.n / seen
    sq, Y = sq * scale, Y * scale
    lam, U = torch.linalg.eigh(Q.T @ Y)  # Q^T G Q, the Gram restricted to the subspace
    lam, U = lam[-rank:].clamp_min(0), U[:, -rank:]
    rest = ((sq - lam.sum(dtype=torch.float64)) / max(1, source.d - lam.numel())).clamp_min(0)
    return Q @ U, lam, rest.to(source.dtype)


@dataclass
class Preconditioner:
    """The centred Gram's spectrum a solve was preconditioned with, for a later solve on rows of the
    same features (numpy arrays: a :class:`~classifiers._path.LogRegPath` holding it pickles
    without torch).

    ``kind`` is ``"eigh"`` (V: the full orthonormal eigenbasis (D, D), lam its eigenvalues),
    ``"lowrank"`` (V: the top eigenvectors (D, k), lam their eigenvalues, rest the mean remaining
    eigenvalue) or ``"diag"`` (lam: the per-feature sums of squares). The Gram is a sum over ``n``
    rows; a solve on m rows scales the eigenvalues by m / n. A preconditioner shapes only the
    convergence, never the optimum: one estimated on a subsample, or on the training split before a
    refit on train+val, serves as well as a fresh one and saves its passes over the rows.
    """

    kind: str
    n: int
    V: np.ndarray | None
    lam: np.ndarray
    rest: float = 0.0

    def fits(self, d: int) -> bool:
        return self.lam.shape[-1] > 0 and (self.V is None or self.V.shape[0] == d) and (
            self.kind != "diag" or self.lam.shape[0] == d)


def _mean(source):
    import torch

    total = torch.zeros(source.d, dtype=torch.float64, device=source.device)
    for _, _, c in source.chunks():
        total += c.sum(0, dtype=torch.float64)
    return total / source.n


def _basis(source, preconditioner, max_eigh_dim, rank=128, reuse=None):
    """Feature mean, orthonormal basis V (D, r) or None, eigenvalues lam (r,) of the centred Gram,
    the low-rank triple or None, and the :class:`Preconditioner` to hand on (None for a row space).

    With fewer rows than dimensions the basis spans the rows only (kernel trick, float64), which is
    exact: the optimum lies in the row space. ``eigh``: V is the full eigenbasis, computed in the
    solve's precision (it only shapes the preconditioner). ``lowrank``: returns (mu, None, None,
    (V_k, lam_k, lam_rest)), the top eigenpairs and the mean remaining eigenvalue. ``reuse``, a
    :class:`Preconditioner` of the same features, replaces the estimate (not a row-space basis,
    which spans only the rows it came from).
    """
    import torch

    f64, dtype = torch.float64, source.dtype
    if preconditioner == "auto":
        if source.n < source.d and source.n <= max_eigh_dim:
            preconditioner = "eigh"
        else:
            preconditioner = "eigh" if source.d <= 2 * rank else "lowrank"
    mu = _mean(source)
    if preconditioner != "diag" and source.n < source.d:
        Xc = torch.cat([c.to(f64) - mu for _, _, c in source.chunks()])
        s, U = torch.linalg.eigh(Xc @ Xc.T)
        keep = s > s.max().clamp_min(1e-300) * 1e-10
        V = (Xc.T @ U[:, keep]) / s[keep].sqrt()
        return mu.to(dtype), V.to(dtype), s[keep].to(dtype), None, None
    mu_c = mu.to(dtype)

    def tensor(a):
        return None if a is None else torch.as_tensor(a).to(device=source.device, dtype=dtype)

    if reuse is not None and reuse.fits(source.d):
        scale = source.n / reuse.n
        lam = tensor(reuse.lam) * scale
        if reuse.kind == "lowrank":
            return mu_c, None, None, (tensor(reuse.V), lam, lam.new_tensor(reuse.rest * scale)), reuse
        return mu_c, tensor(reuse.V), lam, None, reuse
    if preconditioner == "lowrank":
        Vk, lam_k, rest = lowrank_spectrum(source, mu_c, min(rank, source.d))
        kept = Preconditioner("lowrank", source.n, Vk.cpu().numpy(), lam_k.cpu().numpy(), float(rest))
        return mu_c, None, None, (Vk, lam_k, rest), kept
    if preconditioner == "diag":
        sq = torch.zeros(source.d, dtype=f64, device=source.device)
        for _, _, c in source.chunks():
            sq += ((c - mu_c) ** 2).sum(0, dtype=f64)
        sq = sq.to(dtype)
        return mu_c, None, sq, None, Preconditioner("diag", source.n, None, sq.cpu().numpy())
    gram = torch.zeros(source.d, source.d, dtype=f64, device=source.device)
    for _, _, c in source.chunks():
        c = c - mu_c
        gram += c.T @ c
    lam, V = torch.linalg.eigh(gram.to(dtype))
    lam = lam.clamp_min(0)
    return mu_c, V, lam, None, Preconditioner("eigh", source.n, V.cpu().numpy(), lam.cpu().numpy())


class Problem:
    """Loss, gradient and preconditioner of a stack of problems (one per C) in (A, b) coordinates.

    ``A`` is (g, K, r) with ``W^T = A V^T`` (V None: the rows are already rotated, W = A), and ``b``
    is (g, K). Products are taken as ``W^T X^T`` and ``R^T X`` (class-major), the fast layout for
    the few columns a problem has.
    """

    def __init__(self, source, y_idx, n_classes, mu, V, lam, basis=None, lowrank=None):
        import torch

        self.source, self.K, self.mu, self.V, self.lam, self.lowrank = source, n_classes, mu, V, lam, lowrank
        self.basis = V if basis is None else basis  # maps A back to W (None: identity)
        self.r = source.d if lam is None else lam.numel()
        self.P = self.r * n_classes + n_classes
        self.y = torch.as_tensor(y_idx, device=source.device)

    def split(self, x):
        g = x.shape[0]
        return x[:, : self.r * self.K].view(g, self.K, self.r), x[:, self.r * self.K :]

    def row_count(self):
        """Rows each problem of the stack being solved sums its loss over (scalar: all of them)."""
        return self.source.n

    def row_weights(self, ids, start: int, stop: int, step: int = 1):
        """Weights (g, rows) of the rows ``start:stop:step`` of a chunk for problems ``ids`` of the stack (None:
        all problems); None when every problem counts every row."""
        return None

    def evaluate(self, x, C, ids=None):
        """Objective (g,) float64, gradient (g, P) and mean curvature (g,) at parameters x (g, P) of the
        problems ``ids`` of the stack being solved (None: all of it, in order).

        The mean curvature ``mean_i (1 - sum_k p_ik^2) / (K - 1)`` is 1/K at W = 0 and shrinks as
        the rows get classified confidently; it scales the preconditioner. It is averaged over all
        rows even where a problem counts some (:meth:`row_weights`): the preconditioner, built from
        all rows' Gram, then fits a subset's, which is about its share of the whole.
        """
        import torch

        g, K = x.shape[0], self.K
        A, b = self.split(x)
        WT = A.reshape(g * K, self.r)
        if self.V is not None:
            WT = WT @ self.V.T  # (g*K, D)
        offset = (b.reshape(g * K) - WT @ self.mu).unsqueeze(1)
        loss = torch.zeros(g, dtype=torch.float64, device=x.device)
        RtX = torch.zeros_like(WT)
        Rsum = torch.zeros(g * K, dtype=WT.dtype, device=x.device)
        curv = torch.zeros(g, dtype=torch.float64, device=x.device)
        low = self.source.low_center is not None  # rows centred, in bfloat16: both products in bfloat16
        WT_low = WT.to(torch.bfloat16) if low else None
        for start, stop, Xc in self.source.chunks():
            n = stop - start
            if low:
                Z = (WT_low @ Xc.T).to(WT.dtype).add_(b.reshape(g * K, 1)).view(g, K, n)
            else:
                Z = torch.addmm(offset, WT, Xc.T).view(g, K, n)
            top = Z.amax(1, keepdim=True)
            R = (Z - top).exp_()  # softmax and log-sum-exp from one exp
            total = R.sum(1, keepdim=True)
            lse = total.log().add_(top)
            R.div_(total)
            yc = self.y[start:stop].view(1, 1, n).expand(g, 1, n)
            per_row, spread = lse.squeeze(1) - Z.gather(1, yc).squeeze(1), 1.0 - (R * R).sum(1)
            M = self.row_weights(ids, start, stop)
            if M is not None:
                per_row, spread = per_row * M, spread * M
            loss += per_row.sum(1, dtype=torch.float64)
            curv += spread.sum(1, dtype=torch.float64)
            R.scatter_add_(1, yc, torch.full((g, 1, n), -1.0, dtype=R.dtype, device=R.device))
            if M is not None:
                R.mul_(M.unsqueeze(1))
            R = R.view(g * K, n)
            if low:  # R^T (X - mu) from the rounded R, so that its centring is exact
                R = R.to(torch.bfloat16)
                RtX += (R @ Xc).to(RtX.dtype)
            else:
                RtX.addmm_(R, Xc)
            Rsum += R.sum(1, dtype=Rsum.dtype)
        f, grad = self.assemble(A, C, loss, RtX, Rsum, centred=low)
        h = (curv / (self.source.n * (K - 1))).clamp_min(1e-6 / K).to(x.dtype)
        return f, grad, h

    def assemble(self, A, C, loss, RtX, Rsum, centred=False):
        """Objective ``C loss + |A|^2 / 2`` and its gradient (g, P) from the data terms summed over
        the rows: ``RtX = R^T X`` (g*K, D), or ``R^T (X - mu)`` when ``centred``, and ``Rsum`` (g*K,),
        R the loss's derivative in the scores."""
        import torch

        g, K = A.shape[0], self.K
        if not centred:
            RtX = RtX - torch.outer(Rsum, self.mu)
        gA = RtX if self.V is None else RtX @ self.V
        gA = gA.view(g, K, self.r) * C.view(g, 1, 1) + A
        gb = Rsum.view(g, K) * C.view(g, 1)
        f = C.double() * loss + 0.5 * (A.double() ** 2).sum((1, 2))
        return f, torch.cat([gA.reshape(g, -1), gb], 1)

    supports_hessian = True  # the multinomial logistic loss (a subclass with another loss sets False)

    def hessian_stride(self) -> int:
        """Every how many rows :meth:`hessian` reads: at most about ``HESSIAN_ROWS`` rows, evenly spaced."""
        return -(-self.source.n // HESSIAN_ROWS)

    def hessian_flops(self, g: int) -> float:
        """Multiply-adds of :meth:`hessian` for a stack of g problems (its one product)."""
        rows = -(-self.source.n // self.hessian_stride())
        return float(g) * self.K * (self.K + 1) / 2 * (self.r + 1) * (self.r + 2) / 2 * rows

    def _hessian_layout(self):
        """The index that scatters the Hessian's distinct entries (class pair k <= l, feature pair i <= j, the
        intercept as feature r) to its (P, P) entries in x's layout, and the feature pairs (2, IJ)."""
        import torch

        if getattr(self, "_layout", None) is None:
            K, r = self.K, self.r
            kl, ij = np.zeros((K, K), dtype=np.int64), np.zeros((r + 1, r + 1), dtype=np.int64)
            tk, tl = np.triu_indices(K)
            kl[tk, tl] = kl[tl, tk] = np.arange(tk.size)
            ti, tj = np.triu_indices(r + 1)
            ij[ti, tj] = ij[tj, ti] = np.arange(ti.size)
            ka = np.concatenate([np.repeat(np.arange(K), r), np.arange(K)])  # class of each entry of x
            ia = np.concatenate([np.tile(np.arange(r), K), np.full(K, r)])  # feature (r: the intercept)
            flat = kl[ka[:, None], ka[None, :]] * ti.size + ij[ia[:, None], ia[None, :]]
            dev = self.source.device
            self._layout = (torch.as_tensor(flat.ravel(), device=dev), torch.as_tensor(np.stack([tk, tl]), device=dev),
                            torch.as_tensor(np.stack([ti, tj]), device=dev))
        return self._layout

    def hessian(self, x, C, ids=None):
        """Cholesky factors (g, P, P) float64 of the objective's Hessian at x (g, P), in x's coordinates, or
        None where one is not positive definite.

        The data term ``sum_n w_n (diag(p_n) - p_n p_n^T) (x) [x_n, 1][x_n, 1]^T`` is symmetric in the
        class pair and in the feature pair: one product of the distinct class-pair weights (g, K(K+1)/2, n)
        with the distinct feature products (n, (r+1)(r+2)/2) gives every entry (a quarter of the full
        product's work). The class-mean direction of the intercepts, along which the loss is flat and every
        gradient is zero, gets the intercepts' mean curvature, so that the factors exist and a solve with
        them leaves that direction alone."""
        import torch

        g, K, r = x.shape[0], self.K, self.r
        flat, (tk, tl), (ti, tj) = self._hessian_layout()
        A, b = self.split(x)
        WT = A.reshape(g * K, r)
        M = torch.zeros(g * tk.numel(), ti.numel(), dtype=x.dtype, device=x.device)
        centred = self.V is None and not bool(self.mu.any())
        diagonal = (tk == tl).to(x.dtype).view(1, -1, 1)
        step = self.hessian_stride()
        seen = torch.zeros(g, dtype=torch.float64, device=x.device)  # the rows' weight read, per problem
        # the feature products do not depend on x: kept for rows held in memory when they are small
        kept = getattr(self, "_pairs", None)
        keep = (not self.source.streamed and kept is None
                and -(-self.source.n // step) * ti.numel() <= HESSIAN_KEEP_FLOATS)
        pairs, part = [], max(1, HESSIAN_KEEP_FLOATS // 4 // ti.numel())  # rows per product: bounded temporaries
        products = 0
        for start, stop, Xc in self.source.chunks():
            first = -start % step  # the chunk's first row on the stride
            for s0 in range(first, stop - start, part * step):
                s1 = min(stop - start, s0 + part * step)
                Xs = Xc[s0:s1:step]
                n = Xs.shape[0]
                Xr = Xs if centred else (Xs - self.mu) if self.V is None else (Xs - self.mu) @ self.V
                if kept is not None:
                    G = kept[products]
                else:
                    Xa = torch.cat([Xr, torch.ones(n, 1, dtype=Xr.dtype, device=Xr.device)], 1)
                    G = Xa[:, ti] * Xa[:, tj]
                    if keep:
                        pairs.append(G)
                products += 1
                p = torch.softmax(torch.addmm(b.reshape(g * K, 1), WT, Xr.T).view(g, K, n), 1)
                w = p[:, tk] * (diagonal - p[:, tl])  # (g, pairs, n): p_k (1 - p_k) on the diagonal, -p_k p_l off
                rows = self.row_weights(ids, start + s0, start + s1, step)
                if rows is not None:
                    w = w * rows.unsqueeze(1)
                    seen += rows.sum(1, dtype=torch.float64)
                else:
                    seen += n
                M.addmm_(w.reshape(-1, n), G)
        if keep:
            self._pairs = pairs
        total = self.row_count()  # a sample's sum, scaled to all the rows each problem counts
        total = (total[ids] if ids is not None and torch.is_tensor(total) else total)
        scale = torch.as_tensor(total, dtype=torch.float64, device=x.device) / seen.clamp_min(1.0)
        M = M.view(g, -1).double() * (C.double() * scale).view(g, 1)  # scaled before it is spread to (P, P)
        H = M[:, flat].view(g, self.P, self.P)
        H.diagonal(dim1=1, dim2=2)[:, : K * r] += 1.0
        bias = slice(K * r, self.P)
        e = H[:, bias, bias].diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-12)
        H[:, bias, bias] += (e / K).view(g, 1, 1)
        # the data term is summed in x's precision: a ridge of that rounding's size keeps it positive definite
        H.diagonal(dim1=1, dim2=2).add_((H.diagonal(dim1=1, dim2=2).mean(1) * self.P * torch.finfo(x.dtype).eps)
                                        .view(g, 1))
        L, info = torch.linalg.cholesky_ex(H)
        return None if bool((info != 0).any()) else L

    def grad_max(self, grad):
        """Largest gradient entry per problem in the original coordinates (W, b), as scikit-learn measures it."""
        gA, gb = self.split(grad)
        if self.basis is not None:
            gA = gA @ self.basis.T
        return torch_max(gA.abs().flatten(1).amax(1), gb.abs().amax(1))

    def precondition(self, q, C, h):
        """Apply the inverse of ``I + h C X_c^T X_c`` (centred over classes) to directions q (g, P).

        With ``h = 1/2`` this is Böhning's bound of the Hessian; with the current mean curvature
        it follows the Hessian as the rows saturate (large C), where the bound is far too big.
        """
        import torch

        qA, qb = self.split(q)
        m = qA.mean(1, keepdim=True)
        hC = (h * C).view(-1, 1, 1)
        if self.lowrank is None:
            outA = (qA - m) / (1.0 + hC * self.lam.view(1, 1, -1)) + m
        else:  # exact on the top eigen-directions, the mean remaining eigenvalue elsewhere
            Vk, lam_k, rest = self.lowrank
            c = qA - m
            shrink = 1.0 / (1.0 + hC * lam_k.view(1, 1, -1)) - 1.0 / (1.0 + hC * rest)
            outA = c / (1.0 + hC * rest) + ((c @ Vk) * shrink) @ Vk.T + m
        outb = (qb - qb.mean(-1, keepdim=True)) / (h * C * self.source.n).clamp_min(1e-12).view(-1, 1)
        return torch.cat([outA.reshape(q.shape[0], -1), outb], 1)


# the objective's relative rounding, its rows' terms summed in the solve's dtype (a generous bound: float32's own
# relative rounding is 6e-8): below it the line search sees no decrease
F32_ROUNDING = 1e-6
F64_ROUNDING = 1e-12
LOW_STALL = 20  # a bfloat16 phase ends after this many iterations without a new low of the gradient
LOW_SETTLE = 2  # "bfloat16": the gradient's error is measured once some gradient sets no new low for this many
LOW_ERROR_MARGIN = 2.0  # a bfloat16 phase stops at this many times its gradient's measured error
LOW_START_MARGIN = 4.0  # none when the gradient starts within this many times that error


def _low_error(problem, x, C, grad, scale):
    """Per problem, the largest error of the bfloat16 gradient ``grad`` at ``x`` against one full-precision
    pass, on the stopping rule's scale."""
    source = problem.source
    center, source.low_center = source.low_center, None
    try:
        _, exact, _ = problem.evaluate(x, C)
    finally:
        source.low_center = center
    return (problem.grad_max(grad - exact) / scale).cpu()


METRIC_AFTER = 10  # iterations of a solve after which a small problem's Hessian replaces the preconditioner
HESSIAN_ROWS = 2048  # the Hessian as a metric is estimated on at most about this many rows (it shapes convergence only)
HESSIAN_KEEP_FLOATS = 1 << 24  # the sampled rows' feature products are kept up to this size (64 MB as float32)
METRIC_MAX_P = 512  # ... of at most this many parameters
METRIC_MAX_FLOPS = 4e9  # ... whose stack's Hessian costs at most this many multiply-adds


def exact_metric(problem, g: int) -> bool:
    """Whether the Hessian of a stack of g problems may serve as L-BFGS's starting metric: a logistic
    problem with few parameters (narrow features, few classes) and a cheap Hessian."""
    return (getattr(problem, "supports_hessian", False) and problem.P <= METRIC_MAX_P
            and problem.hessian_flops(g) <= METRIC_MAX_FLOPS)


def _lbfgs(problem, x, C, tol, max_iter, history_size, max_ls=20, precision="exact"):
    """Batched preconditioned L-BFGS with per-problem Armijo backtracking. Returns x, n_iter, converged.

    ``precision``: ``"exact"`` runs every pass in x's dtype. ``"bfloat16"`` runs every pass on the rows
    centred in bfloat16 (:meth:`RowSource.chunks`); the objective is then noisy at the level of the
    last steps, so a step is accepted on the gradient's estimate of the decrease (trapezoid rule,
    exact for a quadratic) instead of Armijo's. A bfloat16 phase ends for a problem when its gradient
    meets ``tol``, or ``LOW_ERROR_MARGIN`` times the bfloat16 gradient's error measured against one
    full-precision pass (below it the rounding decides), or has set no new low for ``LOW_STALL``
    iterations; with ``"bfloat16"`` converged means one of the first two. ``"mixed"`` measures that
    error at the start (no bfloat16 phase when the start is already within ``LOW_START_MARGIN`` times
    it); ``"bfloat16"`` once a gradient has set no new low for ``LOW_SETTLE`` iterations (a smooth
    descent to ``tol`` pays no full-precision pass). ``"mixed"`` runs such a bfloat16 phase, then
    full-precision passes from there with the same memory, to ``tol``: the rule of ``"exact"``, with
    fewer slow passes.
    """
    import torch

    g, P = x.shape
    ftol = 1e-10 if x.dtype == torch.float32 else 1e-15  # relative decrease below rounding noise
    noise = F32_ROUNDING if x.dtype == torch.float32 else F64_ROUNDING
    S = torch.zeros(history_size, g, P, dtype=x.dtype, device=x.device)
    Y = torch.zeros_like(S)
    rho = torch.zeros(history_size, g, dtype=x.dtype, device=x.device)
    gamma = torch.ones(g, dtype=x.dtype, device=x.device)
    n_iter = torch.zeros(g, dtype=torch.long)
    converged = torch.zeros(g, dtype=torch.bool)
    # sklearn's criterion is max|grad| / (C n) <= tol. Above C = 1 the objective is so flat that a warm
    # start from the previous C already passes it (measured: C >= 100 stopped after 0 iterations with
    # an objective 3-9x sklearn's), so there the scale grows only as sqrt(C): each C gets its own solution.
    scale = torch.where(C > 1, C.sqrt(), C) * problem.row_count()
    source = problem.source
    stored = 0  # pairs written to the memory so far (its ring position), across phases
    loops = 0
    metric_at = 0  # the iteration the metric was last set at
    factors = None  # Cholesky factors of the Hessian where it replaced the preconditioner (exact_metric)

    def metric(q, idx):
        """The starting metric's inverse applied to q (rows ``idx`` of the stack)."""
        if factors is None:
            return problem.precondition(q, C[idx], h[idx])
        L = factors if isinstance(idx, slice) else factors[idx]
        z = torch.linalg.solve_triangular(L, q.double().unsqueeze(2), upper=False)
        return torch.linalg.solve_triangular(L.transpose(1, 2), z, upper=True).squeeze(2).to(q.dtype)

    try:
        for low in {"exact": (False,), "bfloat16": (True,), "mixed": (True, False)}[precision]:
            target = torch.full((g,), float(tol))
            done = torch.zeros(g, dtype=torch.bool)
            source.low_center = problem.mu if low else None
            f, grad, h = problem.evaluate(x, C)
            measured = not low  # the bfloat16 gradient's error; "bfloat16": once a gradient stops falling
            if low and precision == "mixed":  # at the start: a phase too close to its floor is not worth running
                error = _low_error(problem, x, C, grad, scale)
                target = torch.maximum(target, LOW_ERROR_MARGIN * error)
                done = (problem.grad_max(grad) / scale).cpu() <= LOW_START_MARGIN * error
                measured = True
            lowest = torch.full((g,), float("inf"))
            since = torch.zeros(g, dtype=torch.long)  # iterations since the gradient's last new low
            while True:
                gnorm = (problem.grad_max(grad) / scale).cpu()
                converged = gnorm <= target
                done |= converged
                if low:
                    since = torch.where(gnorm < lowest, 0, since + 1)
                    lowest = torch.minimum(lowest, gnorm)
                    if not measured and bool((since[~done] >= LOW_SETTLE).any()):
                        target = torch.maximum(target, LOW_ERROR_MARGIN * _low_error(problem, x, C, grad, scale))
                        measured = True
                        converged = gnorm <= target
                        done |= converged
                    done |= since >= LOW_STALL
                if loops == max_iter or bool(done.all()):
                    break
                if not low and loops - metric_at >= METRIC_AFTER and exact_metric(problem, g):
                    metric_at = loops
                    threads = torch.get_num_threads()
                    with torch_threads(max(threads, getattr(problem, "hessian_threads", None) or threads)):
                        fresh = problem.hessian(x, C)
                    if fresh is not None:  # a new metric: the memory and its scale start again
                        factors = fresh
                        rho.zero_()
                        gamma.fill_(1.0)
                loops += 1
                a = (~done).nonzero().squeeze(1).to(x.device)
                act = slice(None) if a.numel() == g else a  # all active (the usual case): views, not copies
                order = [(stored - 1 - j) % history_size for j in range(min(stored, history_size))]
                q = grad[act].clone()
                alphas = []
                for j in order:
                    alpha = rho[j, act] * torch.linalg.vecdot(S[j, act], q)
                    q -= alpha[:, None] * Y[j, act]
                    alphas.append(alpha)
                d = gamma[act, None] * metric(q, act)
                for j, alpha in zip(reversed(order), reversed(alphas)):
                    beta = rho[j, act] * torch.linalg.vecdot(Y[j, act], d)
                    d += S[j, act] * (alpha - beta)[:, None]
                d = -d
                gd = torch.linalg.vecdot(grad[act], d)
                bad = gd >= 0  # lost descent: restart that problem's memory from the preconditioner
                if bool(bad.any()):
                    rho[:, a[bad]] = 0
                    d[bad] = -metric(grad[a[bad]], a[bad])
                    gd[bad] = (grad[a[bad]] * d[bad]).sum(1)
                t = torch.ones(a.numel(), dtype=x.dtype, device=x.device)
                pending = torch.arange(a.numel(), device=x.device)
                f_new = f[a].clone()
                g_new = grad[a].clone()
                h_new = h[a].clone()
                accepted = torch.zeros(a.numel(), dtype=torch.bool, device=x.device)
                for _ in range(max_ls):
                    idx = a[pending]
                    ft, gt, ht = problem.evaluate(x[idx] + t[pending, None] * d[pending], C[idx], idx)
                    if low:  # decrease t (gd + g_new.d) / 2 <= 1e-4 t gd, from the gradients alone
                        ok = torch.isfinite(ft) & (torch.linalg.vecdot(gt, d[pending]) <= -(1 - 2e-4) * gd[pending])
                    else:  # Armijo
                        ok = ft <= f[idx] + 1e-4 * t[pending].double() * gd[pending].double()
                        # no step shows a decrease where the objective moved by no more than its rounding and even
                        # the slope's prediction of the decrease is below it: that descent ends here, not after
                        # max_ls evaluations
                        floor = noise * f[idx].abs()
                        hopeless = ~ok & ((ft - f[idx]).abs() <= floor) & (
                            t[pending].double() * gd[pending].double().abs() <= floor)
                    f_new[pending[ok]] = ft[ok]
                    g_new[pending[ok]] = gt[ok]
                    h_new[pending[ok]] = ht[ok]
                    accepted[pending[ok]] = True
                    if low:
                        shrink = torch.full_like(ft[~ok], 0.5)
                    else:  # the minimum of the quadratic through f(0), f'(0) and f(t), kept within [t/10, t/2]
                        go_on = ~ok & ~hopeless
                        tp, slope = t[pending[go_on]].double(), gd[pending[go_on]].double()
                        rise = ft[go_on] - f[idx[go_on]] - slope * tp
                        best = -slope * tp / (2.0 * rise)  # as a fraction of t (rise > 0 where Armijo failed)
                        shrink = torch.where(torch.isfinite(best), best, 0.1).clamp(0.1, 0.5)
                        ok = ok | hopeless  # leaves the search, not accepted
                    pending = pending[~ok]
                    if pending.numel() == 0:
                        break
                    t[pending] *= shrink.to(t.dtype)
                # no decrease found, or one below float precision: as good as it gets
                stuck = ~accepted if low else ~accepted | ((f[a] - f_new) <= ftol * f[a].abs().clamp_min(1.0))
                done[a[stuck].cpu()] = True
                n_iter[a.cpu()] += 1
                keep = a[accepted]
                if keep.numel() == 0:
                    continue
                s = t[accepted, None] * d[accepted]
                yv = g_new[accepted] - grad[keep]
                sy = (s * yv).sum(1)
                slot = stored % history_size
                stored += 1
                good = sy > 1e-10 * (s * s).sum(1).sqrt() * (yv * yv).sum(1).sqrt()
                rho[slot, keep] = torch.where(good, 1.0 / sy.clamp_min(1e-30), torch.zeros_like(sy))
                S[slot, keep] = s
                Y[slot, keep] = yv
                h[keep] = h_new[accepted]
                yMy = (yv * metric(yv, keep)).sum(1)
                gamma[keep] = torch.where(good, sy / yMy.clamp_min(1e-30), gamma[keep])
                x[keep] += s
                f[keep] = f_new[accepted]
                grad[keep] = g_new[accepted]
    finally:
        source.low_center = None
    return x, n_iter.numpy(), converged.numpy()


def path_start(solved, Cs, P):
    """Starting points (len(Cs), P) of the next block of a path walked in increasing C, from the last
    two solutions ``solved`` [(C, x), ...]: each C extrapolated linearly in log C from them, by at
    most one of their own steps (a warm start close to the next solution); the one solution, or
    zero, while there are fewer."""
    import torch

    if not solved:
        return torch.zeros(len(Cs), P, dtype=Cs.dtype, device=Cs.device)
    (c2, x2) = solved[-1]
    if len(solved) == 1:
        return x2.expand(len(Cs), -1).clone()
    (c1, x1) = solved[-2]
    step = np.log(c2) - np.log(c1)
    w = [min(1.0, (np.log(float(c)) - np.log(c2)) / step) if step > 0 else 0.0 for c in Cs]
    return x2 + torch.tensor(w, dtype=x2.dtype, device=x2.device).unsqueeze(1) * (x2 - x1)


def solve_path(source, y_idx, n_classes, Cs, tol, max_iter, history_size, block_size, preconditioner,
               max_eigh_dim, problem_cls=None, stop=None, init=None, reuse=None, precision="exact"):
    """Solve every C (any order); returns coefs (G, K', D), intercepts (G, K'), n_iter, converged and
    the :class:`Preconditioner` used (None for a row-space basis), which ``reuse`` passes to a later solve.
    ``precision``: see :func:`_lbfgs` (the logistic loss only; another ``problem_cls`` runs exact).

    K' is 1 for two classes (binomial layout: the multinomial problem at C/2 is the binomial one
    at C, with ``w = w_1 - w_0``), else the number of classes. ``problem_cls`` replaces the
    multinomial logistic loss by another one with :class:`Problem`'s interface (the squared
    hinge of :mod:`classifiers.fast_svm`), which then lays out its own coefficient rows.

    ``stop(indices, coefs, intercepts)`` is called after every block with the block's positions in
    ``Cs`` and its solutions; when it returns True the path ends there, and the C values not reached
    keep NaN coefficients, 0 iterations and ``converged`` False.

    ``init = (coefs, intercepts)``, in the layout returned (one pair per C, or one pair for all),
    starts every C from that model instead of from the previous block's solution (warm starts
    from a screening solve, or from the solution chosen on a validation split before a refit).
    """
    import torch

    K, tdtype = n_classes, source.dtype
    logistic = problem_cls is None
    problem_cls = problem_cls or Problem
    mu, V, lam, lowrank, kept = _basis(source, preconditioner, max_eigh_dim, reuse=reuse)
    if V is not None and source.rotate_(mu, V):  # passes then skip the products with V
        problem = problem_cls(source, y_idx, K, torch.zeros_like(lam), None, lam, basis=V)
    else:
        problem = problem_cls(source, y_idx, K, mu, V, lam, lowrank=lowrank)

    def weights(x):
        A, b = problem.split(x)
        W = A if V is None else A @ V.T  # (g, K, D)
        intercept = b - W @ mu
        W, intercept = W.double().cpu().numpy(), intercept.double().cpu().numpy()
        if logistic and K == 2:
            W = W[:, 1:2] - W[:, 0:1]
            intercept = intercept[:, 1:2] - intercept[:, 0:1]
        return W, intercept

    def coordinates(W, intercept):  # the inverse of weights(): (G, K', D), (G, K') -> x (G, P)
        W = torch.as_tensor(np.asarray(W, dtype=np.float64), dtype=tdtype, device=source.device)
        b = torch.as_tensor(np.asarray(intercept, dtype=np.float64), dtype=tdtype, device=source.device)
        if logistic and K == 2:  # binomial w = w_1 - w_0 from the symmetric multinomial pair
            W, b = torch.cat([-W / 2, W / 2], 1), torch.cat([-b / 2, b / 2], 1)
        b = b + W @ mu
        A = W if V is None else W @ V
        return torch.cat([A.reshape(A.shape[0], -1), b], 1)

    order = np.argsort(Cs, kind="stable")
    start = None
    if init is not None:
        W0, b0 = np.asarray(init[0], dtype=np.float64), np.asarray(init[1], dtype=np.float64)
        if W0.ndim == 2:
            W0, b0 = np.broadcast_to(W0, (Cs.size,) + W0.shape), np.broadcast_to(b0, (Cs.size,) + b0.shape)
        if W0.shape[0] != Cs.size or W0.shape[-1] != source.d_in or not np.all(np.isfinite(W0)):
            raise UserInputError(f"init must hold finite coefficients of shape (n_C, rows, {source.d_in}), "
                                 f"got {W0.shape}")
        start = coordinates(W0[order], b0[order])
    C_model = torch.as_tensor(Cs[order] / (2.0 if logistic and K == 2 else 1.0), dtype=tdtype, device=source.device)
    coefs = intercepts = None
    n_iter = np.zeros(Cs.size, dtype=int)
    converged = np.zeros(Cs.size, dtype=bool)
    solved = []  # (C, x) along the path so far
    for lo in range(0, Cs.size, max(1, block_size)):
        hi = min(Cs.size, lo + max(1, block_size))
        x0 = start[lo:hi].clone() if start is not None else path_start(solved, C_model[lo:hi], problem.P)
        x, it, conv = _lbfgs(problem, x0, C_model[lo:hi], tol, max_iter, history_size,
                             precision=precision if logistic else "exact")
        W, b = weights(x)
        if coefs is None:
            coefs = np.full((Cs.size,) + W.shape[1:], np.nan)
            intercepts = np.full((Cs.size,) + b.shape[1:], np.nan)
        where = order[lo:hi]
        coefs[where], intercepts[where], n_iter[where], converged[where] = W, b, it, conv
        solved = (solved + [(float(c), xj) for c, xj in zip(C_model[lo:hi], x)])[-2:]
        if stop is not None and stop(where, W, b):
            break
    return coefs, intercepts, n_iter, converged, kept


class MaskedProblem(Problem):
    """:class:`Problem` whose stack mixes subsets of the rows (the training rows of k folds): problem j
    sums its loss over the rows of ``masks[group[j]]`` only. ``group`` is set for each stack solved."""

    def __init__(self, source, y_idx, n_classes, mu, V, lam, masks, basis=None, lowrank=None):
        super().__init__(source, y_idx, n_classes, mu, V, lam, basis=basis, lowrank=lowrank)
        self.masks = masks  # (subsets, n) in the solve's dtype: 1 on a subset's rows, else 0
        self.counts = masks.sum(1)
        self.group = None  # (g,) long: the subset of each problem of the stack being solved

    def row_count(self):
        return self.counts[self.group]

    def row_weights(self, ids, start: int, stop: int, step: int = 1):
        return self.masks[self.group if ids is None else self.group[ids], start:stop:step]


class SubsetSolver:
    """Multinomial logistic problems on subsets of one matrix's rows, any number solved as one stack.

    The k folds of a k-fold measurement are subsets of the same labelled rows: fitted apart, each
    estimates its own preconditioner and walks its own path with a Python loop per iteration. Here
    one basis of all the rows serves every subset (the optimum of a subset lies in the span of all
    rows too, so a row-space basis stays exact) and every pass over the rows is one product for the
    whole stack, each problem's loss and gradient summing over its own rows
    (:class:`MaskedProblem`). ``masks`` is (subsets, n) boolean; C is the multinomial problem's
    (two classes: the binomial C / 2, as :func:`solve_path` lays them out).
    """

    def __init__(self, X, y_idx, n_classes, masks, *, device="cpu", memory_budget=1 << 30, dtype="float32",
                 max_eigh_dim=4096):
        import torch

        self.torch_dtype = getattr(torch, dtype)
        source = RowSource(X, device, memory_budget, self.torch_dtype)
        self.n, self.K = source.n, int(n_classes)
        M = torch.as_tensor(np.asarray(masks, dtype=np.float32), device=source.device).to(self.torch_dtype)
        mu, V, lam, lowrank, _ = _basis(source, "auto", max_eigh_dim)
        if V is not None and source.rotate_(mu, V):
            self.problem = MaskedProblem(source, y_idx, n_classes, torch.zeros_like(lam), None, lam, M, basis=V)
        else:
            self.problem = MaskedProblem(source, y_idx, n_classes, mu, V, lam, M, lowrank=lowrank)
        self.P = self.problem.P
        self.device = source.device

    def zeros(self, g: int):
        import torch

        return torch.zeros(g, self.P, dtype=self.torch_dtype, device=self.device)

    def solve(self, x0, C, group, *, tol, max_iter, history_size=10, precision="exact"):
        """Solve the stack started at ``x0`` (g, P) at ``C`` (g,), problem j on subset ``group[j]``;
        returns the solutions (g, P), iterations and whether each converged (:func:`_lbfgs`)."""
        import torch

        self.problem.group = torch.as_tensor(np.asarray(group), dtype=torch.long, device=self.device)
        C = torch.as_tensor(np.asarray(C, dtype=np.float64), dtype=self.torch_dtype, device=self.device)
        return _lbfgs(self.problem, x0.clone(), C, tol, max_iter, history_size, precision=precision)

    def predictions(self, x) -> np.ndarray:
        """Class index (g, n) of every row under each of the models x (g, P)."""
        import torch

        p, g, K = self.problem, x.shape[0], self.K
        A, b = p.split(x)
        WT = A.reshape(g * K, p.r)
        if p.V is not None:
            WT = WT @ p.V.T
        offset = (b.reshape(g * K) - WT @ p.mu).unsqueeze(1)
        out = torch.empty(g, self.n, dtype=torch.long, device=self.device)
        for start, stop, Xc in p.source.chunks():  # max's indices, the first maximum's: argmax(1)'s, on a slow path
            out[:, start:stop] = torch.addmm(offset, WT, Xc.T).view(g, K, stop - start).max(1).indices
        return out.cpu().numpy()
