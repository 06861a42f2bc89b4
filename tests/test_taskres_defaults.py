"""TaskRes's per-dataset alpha and lr, now a table on the method: the same values as before the move.

EXPECTED was computed from main at 9d735a4, before issue 20's move (when the values lived on TaskData and
reached the method as FitContext.dataset_alpha / dataset_lr), by calling its
``reference_defaults(name, backbone, 16, task.alpha, task.lr)`` with each dataset's TaskData values
(datasets/coop.py, mini/tasks.py). It is a literal on purpose: a change to the table must change it here.
"""

from __future__ import annotations

import math

import pytest
import torch

from taskres.datasets import DOMAIN_SHIFT_TARGETS, known_datasets
from taskres.features import CachedViews
from taskres.methods import get_method
from taskres.methods.base import FitContext
from taskres.mini.tasks import DEMO_TASKS, TUNING_TASKS

BACKBONES = ("RN50", "RN50-quickgelu", "ViT-B-16", "taskres-mini")
RN50_LR, OTHER_LR = (0.002, 0.002, 0.0002, 0.0002), (0.0002,) * 4
# name: (alpha, lr on each of BACKBONES)
EXPECTED = {
    "caltech101": (0.5, RN50_LR),
    "dtd": (0.5, RN50_LR),
    "eurosat": (0.5, RN50_LR),
    "fgvc_aircraft": (0.5, RN50_LR),
    "food101": (0.5, RN50_LR),
    "imagenet": (0.5, OTHER_LR),
    "mini-colours": (0.5, (0.02,) * 4),
    "mini-colours-tune": (0.5, (0.02,) * 4),
    "mini-shapes": (0.5, (0.02,) * 4),
    "mini-shapes-tune": (0.5, (0.02,) * 4),
    "oxford_flowers": (1.0, RN50_LR),
    "oxford_pets": (0.5, RN50_LR),
    "stanford_cars": (0.5, RN50_LR),
    "sun397": (0.5, RN50_LR),
    "ucf101": (0.5, RN50_LR),
    # the domain-shift targets (test only; TaskData's defaults on main) and a class folder's name
    "imagenetv2": (0.5, RN50_LR),
    "imagenet_sketch": (0.5, RN50_LR),
    "imagenet_a": (0.5, RN50_LR),
    "imagenet_r": (0.5, RN50_LR),
    "my_folder": (0.5, RN50_LR),
}


def context(task_name: str, model: str) -> FitContext:
    feats, labels = torch.zeros(1, 2, 4), torch.tensor([0, 1])
    return FitContext(task_name=task_name, classnames=["a", "b"], templates=["{}"], text_classifier=torch.eye(2, 4),
                      logit_scale=math.log(100.0), train=CachedViews(feats, labels, 0), shots=16, seed=0,
                      backbone_identity={"model": model, "fingerprint": "0"}, progress=False)


def test_every_registered_dataset_and_mini_task_has_an_expected_row():
    registered = {*known_datasets(), *DEMO_TASKS, *TUNING_TASKS}
    assert registered <= set(EXPECTED) and set(DOMAIN_SHIFT_TARGETS) <= registered


@pytest.mark.parametrize("method", ["taskres", "taskres_enhanced"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_resolved_alpha_and_lr_equal_mains(method, name):
    alpha, lrs = EXPECTED[name]
    for model, lr in zip(BACKBONES, lrs):
        params = get_method(method).resolved_params(context(name, model))
        assert (params.alpha, params.lr) == (alpha, lr), (name, model)


def test_values_given_by_the_user_win_over_the_table():
    params = get_method("taskres", {"alpha": 0.25, "lr": 1e-3}).resolved_params(context("oxford_flowers", "RN50"))
    assert (params.alpha, params.lr) == (0.25, 1e-3)
