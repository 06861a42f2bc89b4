"""taskres draws CoOp's few-shot lists exactly (issue 19): the golden lists that Dassl's own dataset classes drew
(``python -m parity.fewshot``) on small synthetic CoOp layouts, rebuilt here from each golden's recipe.

Every (shots 1-16, seed 1-3) train and val list must be equal, in order; and base-to-new (fix 5) must keep the
base half of the draw over all classes, as CoOp's ``subsample_classes`` after ``generate_fewshot_dataset``.
"""

from __future__ import annotations

import pytest

from parity import fewshot
from taskres.datasets import load_dataset, make_fewshot_split
from taskres.protocols import base_new_labels, subset_classes

DATASETS = sorted(fewshot.LAYOUTS)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """Each dataset's golden and the task taskres reads from the layout rebuilt from the golden's recipe."""
    root = tmp_path_factory.mktemp("coop-layouts")
    out = {}
    for name in DATASETS:
        golden = fewshot.load(name)
        paths = fewshot.build_layout(name, root, golden["recipe"])
        out[name] = golden, paths, load_dataset(name, str(root))
    return out


def indices(samples, paths: list[str]) -> list[int]:
    where = {p: i for i, p in enumerate(paths)}
    return [where[s.path] for s in samples]


def test_the_goldens_cover_every_dataset_shot_and_seed_and_stay_small():
    for name in DATASETS:
        golden = fewshot.load(name)
        assert golden["recipe"] == fewshot.LAYOUTS[name]  # the script's layouts are the goldens' layouts
        assert sorted(golden["draws"]) == sorted(fewshot.draw_key(k, s) for k in range(1, 17) for s in (1, 2, 3))
        assert len(golden["base2new"]) == len(fewshot.BASE2NEW_SHOTS) * 3
        assert (fewshot.GOLDEN_DIR / f"fewshot_{name}.json").stat().st_size < 50_000


@pytest.mark.parametrize("name", DATASETS)
def test_taskres_draws_dassls_lists_in_order(name, layouts):
    golden, paths, task = layouts[name]
    assert [len(task.train), len(task.val)] == [len(paths["train"]), len(paths["val"])]
    assert [s.path for s in task.train] == paths["train"]  # the split file's order is what the indices index
    for key, want in golden["draws"].items():
        shots, seed = map(int, key.split("-"))
        # CoOp takes every image of a class shorter than K: taskres does so with allow_fewer
        split = make_fewshot_split(task, shots, seed, allow_fewer=True)
        assert indices(split.train, paths["train"]) == want["train"], f"{name} train, shots {shots} seed {seed}"
        assert indices(split.val, paths["val"]) == want["val"], f"{name} val, shots {shots} seed {seed}"


@pytest.mark.parametrize("name", DATASETS)
def test_base_to_new_keeps_the_base_half_of_coops_draw(name, layouts):
    """Fix 5: the shots are drawn over every class, then the base half is kept (before: drawn on the base
    classes alone, so a seed picked other images, and other validation images for every dataset)."""
    golden, paths, task = layouts[name]
    base, _ = base_new_labels(task.num_classes)
    base_task = subset_classes(task, base)
    for key, want in golden["base2new"].items():
        shots, seed = map(int, key.split("-"))
        split = make_fewshot_split(base_task, shots, seed, allow_fewer=True)
        assert indices(split.train, paths["train"]) == want["train"], f"{name} base train, shots {shots} seed {seed}"
        assert indices(split.val, paths["val"]) == want["val"], f"{name} base val, shots {shots} seed {seed}"
        assert {s.label for s in split.train} == set(range(len(base)))  # relabelled 0..m-1, as CoOp
