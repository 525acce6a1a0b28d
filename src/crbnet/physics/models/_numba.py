"""numba for crbnet's compiled CPU kernels: imported on first use, compiled once per machine.

Importing numba alone costs a quarter of a second, so nothing here runs at import time. A
kernel is compiled with a disk cache where numba can write one (else in every process), with
reassociation and contraction so that LLVM may reorder and vectorize sums (results move by
round-off only), and runs on as many threads as PyTorch uses.

Threading layer. numba's default choice on Linux is its OpenMP layer, whose worker threads
busy-wait after each kernel and whose start also reset the OpenMP thread count PyTorch uses
(1 → 2 here; :func:`threads` restores it).
On a machine whose cores are busy this made the training steps that follow a pool refresh 20×
slower (23 → 490 ms per step, 1 PyTorch thread, load 10 on 2 cores; 24–29 ms with
``GOMP_SPINCOUNT=0`` or ``OMP_WAIT_POLICY=passive``, i.e. without the busy wait; on an idle
machine no difference). numba's own "workqueue" layer has neither effect and runs these
kernels as fast (measured equal within noise), so crbnet asks for it unless the user chose a
layer (``NUMBA_THREADING_LAYER``) or numba already started its threads. workqueue does not
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
    """The numba module (imported here, on first use), set to the workqueue threading layer
    where nobody chose one (see the module docstring)."""
    import numba

    _prefer_workqueue(numba)
    return numba


def _prefer_workqueue(numba) -> None:
    if os.environ.get("NUMBA_THREADING_LAYER"):
        return
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
