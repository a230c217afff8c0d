"""Ahead-of-time compile check of every Triton kernel of the package, for CUDA targets, on a machine without a GPU.

How it works (``python -m isnet_kernels.backends.triton.aot``, see :mod:`.__main__`):

1. :mod:`.capture` installs a stand-in Triton driver that reports a CUDA target (sm_80 or sm_90) and a
   pre-compile hook (``triton.knobs.runtime.jit_cache_hook``) that records each compile request and skips the
   compile and the launch. The package's own launchers then run on empty CPU tensors, so argument binding,
   specialisation, the autotuner's key and pruning are the real ones; every configuration the autotuner would
   benchmark is recorded. One request per distinct specialisation (Triton's own cache key).
2. :mod:`.workload` drives the launchers over the layer shapes of ResNet-18, ResNet-50 and a ViT-B block at
   224x224, batch 32, in fp32 (IEEE and TF32 precision), bf16, fp16 and fp64.
3. :mod:`.build` compiles each request with ``triton.compile`` for the target and reads the figures: registers,
   spill bytes and stack from ``ptxas -v``, shared memory from the kernel's metadata, the tensor-core instruction
   (``wgmma`` / ``mma`` / none) from the PTX, and the reduction length K of every ``tt.dot`` in the TTGIR.
   Results are cached by a content hash of the request (kernel source included) and the target.
4. :mod:`.report` writes the table (markdown and JSON) and the verdict: a compile error, shared memory over the
   target's limit, a spill, or a ``tt.dot`` shorter than 16 along K fails the check.

This package must be imported before any kernel module is, in a process where ``TRITON_INTERPRET`` is not 1
(the interpreter replaces the kernels when they are defined).
"""
