"""Training loops: plain CE, the generic teacher (GTN), knowledge distillation, torchrun/DDP.

Importing this package sets nothing: the process-wide settings training relies on (oneDNN's AVX2 cap on AMD CPUs
with AVX-512) are set where a process starts (gtnpipe.environment).
"""
