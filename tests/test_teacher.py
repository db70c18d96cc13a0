"""The teacher: same stage resolutions as the supernet, clearly larger than the largest student."""

from __future__ import annotations

import pytest
import torch

from gtnpipe.config.recipes import TeacherConfig, load_recipe
from gtnpipe.errors import ConfigError
from gtnpipe.models.counting import count_module
from gtnpipe.models.supernet import Supernet
from gtnpipe.models.teacher import build_teacher
from gtnpipe.space.counting import count
from gtnpipe.space.spaces import TaskShape, get_space

SPACE = get_space("mbv3-28")


@pytest.mark.parametrize("task", [TaskShape(1, (28, 28), 10), TaskShape(3, (32, 32), 7)])
def test_teacher_stages_match_supernet_stages(task: TaskShape) -> None:
    torch.manual_seed(0)
    teacher = build_teacher(TeacherConfig(), SPACE, task).eval()
    supernet = Supernet(SPACE, task).eval()
    x = torch.randn(2, task.in_channels, *task.image_hw)
    with torch.no_grad():
        t_feats = teacher.forward_stages(x)
        for arch in (SPACE.smallest(), SPACE.largest()):
            s_feats = supernet.forward_stages(x, arch)
            assert [f.shape[-2:] for f in t_feats] == [f.shape[-2:] for f in s_feats]
        assert teacher(x).shape == (2, task.num_classes)
    assert [f.shape[-1] for f in t_feats] == ([14, 7, 4, 4] if task.image_hw == (28, 28) else [16, 8, 4, 4])


def test_default_teacher_is_clearly_larger_than_the_largest_student() -> None:
    task = TaskShape(1, (28, 28), 10)
    teacher = count_module(build_teacher(load_recipe("default").teacher, SPACE, task), task)
    largest = count(SPACE.largest(), SPACE, task)
    assert teacher.macs >= 2 * largest.macs
    assert teacher.params >= 1.2 * largest.params


def test_teacher_with_wrong_stage_count_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="teacher has 3 stages but space 'mbv3-28' has 4"):
        build_teacher(TeacherConfig(widths=(8, 8, 8), blocks=(1, 1, 1)), SPACE, TaskShape(1, (28, 28), 10))
