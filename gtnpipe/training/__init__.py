"""Training loops: plain CE, the generic teacher (GTN), knowledge distillation, torchrun/DDP.

oneDNN's AVX-512 CPU kernels (torch 2.13.0's bundled oneDNN) corrupt memory in the backward pass of the 64-px
colour builds on an AMD EPYC with AVX-512 (Zen 4): "double free or corruption", then SIGABRT or SIGSEGV, every time
(tests/test_own_data.py); capped at AVX2 the same builds pass. The cap is set here, before any training runs, unless
the user set ONEDNN_MAX_CPU_ISA; oneDNN reads it once, at its first kernel.
"""

import os

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
