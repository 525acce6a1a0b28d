"""numba for crbnet's compiled CPU kernels: imported on first use, compiled once per machine.

Importing numba alone costs a quarter of a second, so nothing here runs at import time. A
kernel is compiled with a disk cache where numba can write one (else in every process), with
reassociation and contraction so that LLVM may reorder and vectorize sums (results move by
round-off only), and runs on as many threads as PyTorch uses.

Threading layer. numba's default on Linux is its OpenMP layer. Its worker threads busy-wait
after each kernel, and its start also resets the OpenMP thread count PyTorch uses (1 → 2 here;
:func:`threads` restores it). In training, where PyTorch steps follow kernel calls on the same
cores, the busy wait made the steps after a pool refresh 20× slower on a busy machine (23 → 490
ms per step, 1 PyTorch thread, load 10 on 2 cores; 24–29 ms with ``GOMP_SPINCOUNT=0``). numba's
"workqueue" layer does not spin, but costs ~0.7 ms more per kernel launch on an idle machine
(simulate of 64 MT voxels 0.8–1.1 → 1.5–2.0 ms; NLLS, which launches many small kernels, 161 →
98 voxels/s). So the choice is scoped: the trainer calls :func:`prefer_workqueue` before its
first kernel; everything else keeps numba's default. A user's ``NUMBA_THREADING_LAYER`` always
wins, and once numba has started its threads the layer stays what it is. workqueue does not
allow two kernels at once from different Python threads; :func:`threads` holds a lock around
each call.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
import threading
import warnings
from typing import Callable, Iterator


def module():
    """The numba module (imported here, on first use)."""
    import numba

    return numba


def prefer_workqueue() -> None:
    """Ask for numba's workqueue threading layer in this process (see the module docstring):
    only where numba is installed, nobody chose a layer and numba's threads have not started."""
    if os.environ.get("NUMBA_THREADING_LAYER") or not available():
        return
    numba = module()
    from numba.np.ufunc import parallel

    if not parallel._is_initialized and numba.config.THREADING_LAYER == "default":
        numba.config.THREADING_LAYER = "workqueue"


# One kernel launch at a time (the workqueue layer refuses concurrent launches).
_launch_lock = threading.Lock()


def compile_parallel(function: Callable) -> Callable:
    """``function`` compiled with ``parallel=True`` (its ``numba.prange`` loops run in threads);
    cached on disk where possible."""
    numba = module()
    options = dict(parallel=True, nogil=True, fastmath={"reassoc", "contract"})
    try:
        return numba.njit(cache=True, **options)(function)
    except RuntimeError:            # no writable cache directory: compile in every process
        return numba.njit(cache=False, **options)(function)


@contextlib.contextmanager
def threads() -> Iterator[None]:
    """Run the enclosed kernel calls on PyTorch's thread count; numba's setting is restored
    afterwards, and PyTorch's too: with numba's OpenMP threading layer, starting it and setting
    its thread count also set the OpenMP count that PyTorch uses."""
    import torch

    numba = module()
    with _launch_lock:
        torch_threads = torch.get_num_threads()
        before = numba.get_num_threads()
        numba.set_num_threads(max(1, min(torch_threads, numba.config.NUMBA_NUM_THREADS)))
        try:
            yield
        finally:
            numba.set_num_threads(before)
            if torch.get_num_threads() != torch_threads:
                torch.set_num_threads(torch_threads)


@functools.cache
def available() -> bool:
    """Whether compiled kernels can be used: numba is installed and imports (a numba built for
    another numpy fails there); otherwise crbnet runs its PyTorch code."""
    if importlib.util.find_spec("numba") is None:
        return False
    try:
        importlib.import_module("numba")
    except Exception as exc:                               # pragma: no cover - broken install
        warnings.warn(f"numba does not import ({type(exc).__name__}: {exc}); crbnet runs its "
                      "slower PyTorch code on CPU", RuntimeWarning, stacklevel=2)
        return False
    return True


def untracked_cpu(*tensors) -> bool:
    """Whether a compiled kernel may replace PyTorch code for these tensors: all on the CPU
    and none tracked by an autodiff (see :func:`untracked`)."""
    return all(t.device.type == "cpu" for t in tensors) and untracked(*tensors)


def untracked(*tensors) -> bool:
    """Whether no autodiff tracks these tensors (autograd, forward-mode dual tensors,
    torch.func transforms): then code that computes its own derivatives (whose numbers carry
    none) may replace the differentiable code."""
    import torch
    import torch.autograd.forward_ad as fwAD

    for t in tensors:
        if t.requires_grad and torch.is_grad_enabled():
            return False
        if fwAD.unpack_dual(t).tangent is not None:
            return False
        try:
            if torch._C._functorch.is_functorch_wrapped_tensor(t):
                return False
        except AttributeError:                     # pragma: no cover - other torch version
            return False
    return True
