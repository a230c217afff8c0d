"""The backends: which kernels compute the relevance ops.

A backend is one implementation of the relevance primitives of :class:`~isnet_kernels.ops.primitives.TorchPrimitives`
(the plain-PyTorch specification) behind the hand-written autograd Functions of :mod:`isnet_kernels.ops`: a kernel
set whose methods take and return the same tensors, plus a record saying whether it can run here (and why not) and
which devices it takes. The fused ops' records (:mod:`isnet_kernels.ops.fused`) say, per op, what each compiled
backend calls; the backends generate their methods from them.

- :mod:`.dispatch`: the backend table (one :class:`~isnet_kernels.backends.dispatch.Backend` record each:
  ``reference``, ``torch``, ``cpp``, ``triton``, ``cuda``), ``backend="auto"`` and name resolution, and
  :func:`~isnet_kernels.backends.dispatch.backend_status`;
- :mod:`.cpp`: the compiled CPU kernels (the extension ``isnet_kernels._C``, built from ``csrc/cpu``), their
  fake kernels for ``torch.compile``, and :class:`~isnet_kernels.backends.cpp.CppPrimitives`;
- :mod:`.cuda`: the CUDA C++ kernels (the extension ``isnet_kernels._C_cuda``, built from ``csrc/cuda``) for the
  same operators, and :class:`~isnet_kernels.backends.cuda.CudaPrimitives`;
- :mod:`.triton`: the Triton kernels (elementwise, pooling, implicit-GEMM convolutions),
  :class:`~isnet_kernels.backends.triton.TritonPrimitives`, their first-call self-check, and the ahead-of-time
  compile check (``python -m isnet_kernels.backends.triton.aot``).

``reference`` (plain PyTorch ops under autograd) and ``torch`` (the Functions on
:class:`~isnet_kernels.ops.primitives.TorchPrimitives`) need no module of their own. The backends sit above
:mod:`isnet_kernels.ops` and below :mod:`isnet_kernels.lrp`: ``ops`` never imports them, and ``lrp`` picks one
through :mod:`.dispatch`. This package's own module imports nothing, so importing one backend loads no other.
"""
