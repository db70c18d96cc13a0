"""Training loops: plain CE, the generic teacher (GTN), knowledge distillation, torchrun/DDP."""
