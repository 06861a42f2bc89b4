"""The embedded mini model: its generated world, its pretraining, its packaged weights and demo tasks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from taskres.mini import pretrain as mini_pretrain
from taskres.mini import tasks as mini_tasks
from taskres.mini.world import COLOURS, COUNT_WORDS, World, WorldConfig, sample_batch

MICRO_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 1, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


# ----------------------------------------------------------------------------- world
def test_world_is_deterministic_per_seed_and_differs_across_seeds():
    world = World(WorldConfig(image_size=32))
    a_img, a_cap, _ = sample_batch(world, 16, 0)
    b_img, b_cap, _ = sample_batch(world, 16, 0)
    c_img, c_cap, _ = sample_batch(world, 16, 1)
    assert a_img.shape == (16, 3, 32, 32) and a_img.dtype == np.float32
    assert 0.0 <= a_img.min() and a_img.max() <= 1.0
    np.testing.assert_array_equal(a_img, b_img)
    assert a_cap == b_cap
    assert not np.array_equal(a_img, c_img)
    assert a_cap != c_cap


def test_pretraining_world_never_draws_held_out_pairs():
    world = World(WorldConfig())
    scenes = world.sample_scenes(2000, np.random.default_rng(0))
    held = set(world.config.holdout_pairs)
    drawn = {(g["colour"], g["shape"]) for i in range(len(scenes)) for g in scenes.describe(i)["groups"]}
    assert drawn and not drawn & held


def _nearest_colour(rgb: np.ndarray) -> str:
    names = list(COLOURS)
    palette = np.array([COLOURS[n] for n in names])
    return names[int(np.argmin(((palette - rgb) ** 2).sum(1)))]


def test_captions_name_the_colour_and_count_that_are_drawn():
    # Solid objects on plain backgrounds: the colour at an object's centre and the number of blobs of
    # that colour can be read back from the pixels and must agree with the caption.
    from scipy import ndimage

    cfg = WorldConfig(image_size=64, textures=("solid",), backgrounds=("plain",), second_group_prob=0.0)
    world = World(cfg)
    rng = np.random.default_rng(3)
    scenes = world.sample_scenes(48, rng)
    images = world.render(scenes, rng)
    captions = world.captions(scenes, rng)
    checked_colour = checked_count = 0
    for i, caption in enumerate(captions):
        img = images[i].transpose(1, 2, 0)
        x, y = scenes.object_xy[i, 0]
        centre = img[int(y * 64), int(x * 64)]
        seen = _nearest_colour(centre)
        assert seen == scenes.describe(i)["groups"][0]["colour"]
        named = [c for c in COLOURS if c in caption.split()]
        if named:
            assert named == [seen], caption
            checked_colour += 1
        mask = np.abs(img - centre).max(axis=2) < 0.15  # objects of a group differ by colour jitter
        blobs, n = ndimage.label(mask)
        sizes = ndimage.sum(mask, blobs, range(1, n + 1))
        drawn = int((np.asarray(sizes) >= 12).sum())
        words = caption.replace(".", " ").replace(",", " ").split()
        for count, word in COUNT_WORDS.items():
            if word in words:
                assert count == drawn, (caption, drawn)
                checked_count += 1
    assert checked_colour > 20 and checked_count > 5


def test_world_rejects_unknown_attributes():
    with pytest.raises(ValueError, match="shapes"):
        WorldConfig(shapes=("circle", "blob"))


# ----------------------------------------------------------------------------- pretraining
def _micro_config(tmp_path: Path) -> Path:
    path = tmp_path / "taskres-micro-test.json"
    path.write_text(json.dumps(MICRO_CONFIG))
    return path


def _micro_run(tmp_path: Path, out: str, steps: int, **kw) -> dict:
    cfg = mini_pretrain.PretrainConfig(
        out=tmp_path / out, steps=steps, batch_size=32, lr=2e-3, warmup_steps=1, seed=0,
        model_config=_micro_config(tmp_path), threads=1, progress=False, **kw,
    )
    return mini_pretrain.pretrain(cfg)


def test_pretrain_smoke_loss_falls_and_writes_weights_and_record(tmp_path):
    record = _micro_run(tmp_path, "run", steps=10)
    out = tmp_path / "run"
    weights = out / "taskres-micro-test.safetensors"
    assert weights.is_file() and (out / "taskres-micro-test.record.json").is_file()
    assert record["steps"] == 10 and record["batch_size"] == 32 and record["seed"] == 0
    assert record["world"]["image_size"] == 32
    assert {"torch", "open_clip"} <= set(record["versions"])
    losses = torch.load(out / "checkpoint.pt", weights_only=False)["losses"]
    assert len(losses) == 10
    assert np.mean(losses[-3:]) < losses[0] - 0.05, losses
    from safetensors.torch import load_file

    state = load_file(str(weights))
    assert all(t.dtype == torch.float16 for t in state.values() if t.is_floating_point())


def test_pretrain_resumes_from_its_checkpoint_exactly(tmp_path, monkeypatch):
    straight = _micro_run(tmp_path, "straight", steps=6)
    real_loss, calls = mini_pretrain.clip_loss, []

    def killed_at_step_5(*args):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt  # the run dies after its step-3 checkpoint
        return real_loss(*args)

    monkeypatch.setattr(mini_pretrain, "clip_loss", killed_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        _micro_run(tmp_path, "resumed", steps=6, checkpoint_every=3)
    monkeypatch.setattr(mini_pretrain, "clip_loss", real_loss)
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["step"] == 3
    resumed = _micro_run(tmp_path, "resumed", steps=6, checkpoint_every=3)
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    assert b["step"] == 6 and len(b["losses"]) == 6
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=1e-5)
    assert straight["final_loss"] == pytest.approx(resumed["final_loss"], rel=1e-5)
    assert not list((tmp_path / "resumed").glob("*.tmp"))


def test_thread_tuner_keeps_the_faster_count_and_reprobes_when_steps_slow_down():
    tuner = mini_pretrain.ThreadTuner([1, 2], period=100, probe=2)
    cost = {1: 1.0, 2: 0.5}  # an idle machine: 2 threads are faster
    for step in range(4):
        t = tuner.threads_for(step)
        tuner.record(t, cost[t])
    assert tuner.best == 2
    cost = {1: 1.0, 2: 6.0}  # someone else takes the cores: 2 threads now wait on each other
    seen = []
    for step in range(4, 20):
        t = tuner.threads_for(step)
        seen.append(t)
        tuner.record(t, cost[t])
    assert tuner.best == 1 and seen[-1] == 1 and seen.count(2) < 10


# ----------------------------------------------------------------------------- shipped model
def test_shipped_weights_load_through_open_clip():
    import open_clip

    weights = mini_pretrain.WEIGHTS_PATH
    assert weights.is_file(), "the packaged taskres-mini weights are missing"
    assert weights.stat().st_size <= 20 * 1024 * 1024
    open_clip.add_model_config(mini_pretrain.MINI_DIR)
    model, _, preprocess = open_clip.create_model_and_transforms("taskres-mini", pretrained=str(weights))
    tokenizer = open_clip.get_tokenizer("taskres-mini")
    assert isinstance(tokenizer, open_clip.tokenizer.SimpleTokenizer) and tokenizer.context_length == 32
    model.eval()
    world = World(WorldConfig())
    images, captions, _ = sample_batch(world, 4, 0)
    pixels = torch.stack([preprocess(Image.fromarray((im.transpose(1, 2, 0) * 255).astype(np.uint8))) for im in images])
    with torch.no_grad():
        img = model.encode_image(pixels, normalize=True)
        txt = model.encode_text(tokenizer(captions), normalize=True)
    assert img.shape == txt.shape == (4, 128)
    assert torch.isfinite(img).all() and torch.isfinite(txt).all()
    # A trained model matches its own captions better than chance.
    assert (img @ txt.T).argmax(1).eq(torch.arange(4)).sum() >= 2
    record = json.loads(mini_pretrain.RECORD_PATH.read_text())
    assert record["model"] == "taskres-mini" and record["weights_dtype"] == "float16"


# ----------------------------------------------------------------------------- demo tasks
def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(folder)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    mini_tasks.load_demo_task("mini-shapes", root)
    return root


def test_demo_task_names_and_specs():
    assert len(mini_tasks.DEMO_TASKS) >= 2
    for name in mini_tasks.DEMO_TASKS:
        assert name.startswith("mini-")
        spec = mini_tasks.demo_task_spec(name)
        assert len(spec.classnames) == len(spec.class_worlds) == len(set(spec.classnames))
    assert "plus sign" in mini_tasks.demo_task_spec("mini-shapes").classnames
    assert "white" in mini_tasks.demo_task_spec("mini-colours").classnames


def test_load_demo_task_writes_a_valid_coop_layout(shapes_root):
    task = mini_tasks.load_demo_task("mini-shapes", shapes_root)
    folder = shapes_root / "mini-shapes"
    split = json.loads((folder / "split_zhou_MiniShapes.json").read_text())
    assert set(split) == {"train", "val", "test"}
    for part, per_class in mini_tasks.SPLIT_SIZES.items():
        entries = split[part]
        assert len(entries) == per_class * task.num_classes
        for rel, label, cname in entries[:: per_class]:
            assert (folder / "images" / rel).is_file() and task.classnames[label] == cname
    assert min(mini_tasks.SPLIT_SIZES.values()) >= 4 and mini_tasks.SPLIT_SIZES["train"] >= 16
    assert task.templates and all("{}" in t for t in task.templates)
    with Image.open(task.test[0].path) as im:
        assert im.size == (mini_tasks.IMAGE_SIZE,) * 2 and im.mode == "RGB"
    assert not [p for p in shapes_root.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_load_demo_task_is_deterministic(shapes_root, tmp_path):
    first = _digest(shapes_root / "mini-shapes")
    again = mini_tasks.load_demo_task("mini-shapes", shapes_root)  # read back, not rewritten
    assert _digest(shapes_root / "mini-shapes") == first
    assert again.classnames == list(mini_tasks.demo_task_spec("mini-shapes").classnames)
    # Same name -> the same pixels, wherever and whenever they are drawn.
    images, labels = mini_tasks.render_task_images(mini_tasks.demo_task_spec("mini-shapes"), "test")
    for sample in again.test[::37]:
        i = again.test.index(sample)
        with Image.open(sample.path) as im:
            np.testing.assert_array_equal(np.asarray(im), images[i])
        assert labels[i] == sample.label
    spec = mini_tasks.demo_task_spec("mini-colours")
    a, _ = mini_tasks.render_task_images(spec, "val")
    b, _ = mini_tasks.render_task_images(spec, "val")
    np.testing.assert_array_equal(a, b)


def test_a_killed_write_leaves_no_half_task(tmp_path, monkeypatch):
    def boom(spec, target):
        (target / "images").mkdir()
        (target / "images" / "half.png").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(mini_tasks, "_write_task", boom)
    with pytest.raises(KeyboardInterrupt):
        mini_tasks.load_demo_task("mini-shapes", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_copy_another_process_finished_meanwhile_is_kept_not_replaced(tmp_path, monkeypatch):
    """Two processes writing the same task: the one that finishes second keeps the first one's complete copy
    (a reader may already hold its paths) and throws its own away."""
    write = mini_tasks._write_task
    theirs = tmp_path / "theirs"

    def racing(spec, target):
        write(spec, target)  # ours, in the temporary folder
        if not (tmp_path / spec.name).exists():  # meanwhile the other process renamed its copy into place
            theirs.mkdir()
            write(spec, theirs)
            (theirs / "marker").write_text("the other process's copy")
            theirs.rename(tmp_path / spec.name)

    monkeypatch.setattr(mini_tasks, "_write_task", racing)
    folder = mini_tasks.materialise_demo_task("mini-shapes", tmp_path)
    assert (folder / "marker").read_text() == "the other process's copy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mini-shapes"]  # our temporary copy is gone


def test_unknown_demo_task_is_a_dataset_error(tmp_path):
    from taskres.datasets.base import DatasetError

    with pytest.raises(DatasetError, match="mini-nope"):
        mini_tasks.load_demo_task("mini-nope", tmp_path)


# ----------------------------------------------------------------------------- quality of the shipped model
# Through the public API, as a user would run it: the prior of the packaged weights is useful (zero-shot well
# above chance) but imperfect (16 TaskRes shots add at least 10 points), and one shot does not hurt.
@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    from taskres.api import FitConfig, fit, make_cache
    from taskres.backbone import BackboneConfig, load_backbone
    from taskres.datasets import load_dataset

    root = tmp_path_factory.mktemp("quality")
    backbone = load_backbone(BackboneConfig())  # taskres-mini with its packaged weights
    cache = make_cache(str(root / "cache"))
    top1: dict[tuple[str, str, int], float] = {}
    for name in mini_tasks.DEMO_TASKS:
        task = load_dataset(name, root / "data")
        for method, shots in (("zeroshot", 1), ("taskres", 1), ("taskres", 16)):
            cfg = FitConfig(method=method, dataset=name, data_root=str(root / "data"), shots=shots, seed=1,
                            progress=False)
            result = fit(cfg, backbone=backbone, task=task, cache=cache)
            top1[(name, method, shots)] = result.metrics["top1"]["test"]
    return top1


@pytest.mark.parametrize("name", mini_tasks.DEMO_TASKS)
def test_shipped_model_zero_shot_is_well_above_chance(demo_runs, name):
    chance = 100.0 / len(mini_tasks.demo_task_spec(name).classnames)
    assert demo_runs[(name, "zeroshot", 1)] >= 2 * chance


@pytest.mark.parametrize("name", mini_tasks.DEMO_TASKS)
def test_taskres_16_shots_beats_zero_shot_by_10_points(demo_runs, name):
    assert demo_runs[(name, "taskres", 16)] >= demo_runs[(name, "zeroshot", 1)] + 10.0


@pytest.mark.parametrize("name", mini_tasks.DEMO_TASKS)
def test_taskres_1_shot_is_not_worse_than_zero_shot(demo_runs, name):
    assert demo_runs[(name, "taskres", 1)] >= demo_runs[(name, "zeroshot", 1)] - 1.0
