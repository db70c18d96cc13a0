"""Run by tests/test_distributed.py under `torchrun --nproc-per-node 2`: a few DDP steps, then
each rank saves its final weights for the test to compare."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from gtnpipe.config.recipes import TrainConfig
from gtnpipe.data.datasets import load_dataset
from gtnpipe.models.supernet import Supernet
from gtnpipe.space.spaces import TaskShape, get_space
from gtnpipe.training import distributed
from gtnpipe.training.train import fit, seed_everything


class _ArchView(torch.nn.Module):
    """The supernet with one arch active, as a plain classifier for evaluation."""

    def __init__(self, supernet: Supernet, arch) -> None:
        super().__init__()
        self.supernet, self.arch = supernet, arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.supernet(x, self.arch)


def main(out: Path, model_kind: str) -> None:
    distributed.init_from_env()
    data = load_dataset(val_size=64, train_subset=256, test_subset=64)
    space = get_space("mbv3-28")
    # Different seeds per rank: DDP must still start every rank from rank 0's weights.
    seed_everything(100 + distributed.rank())
    if model_kind == "supernet":
        net = Supernet(space, TaskShape(1, (28, 28), 10))
        archs = space.sample_many(8, seed=0)

        def loss_fn(model, x, y, idx):
            logits = model(x, archs[int(idx[0]) % len(archs)])
            return torch.nn.functional.cross_entropy(logits, y), logits
    else:
        from gtnpipe.models.static import build_static

        net = build_static(space.smallest(), space, TaskShape(1, (28, 28), 10))
        loss_fn = None
    eval_model = _ArchView(net, space.largest()) if model_kind == "supernet" else net
    cfg = TrainConfig(epochs=1, batch_size=64, lr=0.05)
    result = fit(net, data, cfg, seed=0, run_id="ddp", loss_fn=loss_fn, progress=False,
                 find_unused_parameters=model_kind == "supernet", eval_model=eval_model)
    torch.save({"state": net.state_dict(), "test_top1": result.test_top1, "world": distributed.world_size()},
               out / f"rank{distributed.rank()}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
