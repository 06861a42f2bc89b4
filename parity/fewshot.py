"""The few-shot draw of CoOp's protocol as golden lists: what Dassl's own dataset classes draw on small CoOp layouts.

    python -m parity.fewshot --dassl /path/to/Dassl.pytorch --coop /path/to/CoOp

builds each synthetic layout of ``LAYOUTS`` (CoOp's folder and split-file format, split files shuffled, classes
of unequal sizes, some with fewer than 16 train or 4 val images), runs CoOp's dataset class on it
(datasets/<name>.py, which calls Dassl's ``DatasetBase.generate_fewshot_dataset`` for train and val, then
``subsample_classes``) after Dassl's ``set_random_seed(seed)``, as CoOp's train.py seeds before building the
data, for shots 1-16 and seeds 1-3, and for base-to-new (``SUBSAMPLE_CLASSES=base``), and writes
``tests/parity/golden/fewshot_<dataset>.json``: the layout's recipe, the snapshots' commits, and each draw as
indices into the split file's train / val lists, in the order drawn. ``tests/parity/test_fewshot_draw.py``
rebuilds the layouts from the recipes and checks that taskres draws exactly these lists, in order.

How the official code is run (nothing of it is copied here): from the snapshot paths given; ``wilds``
(imported by Dassl's package for datasets not used here) is replaced by an empty module when it is not
installed; the ``split_fewshot`` folder CoOp caches its draws in is emptied before each draw, so every list
is drawn, never read back from a pickle. CoOp reads no image: the files are empty, they only have to exist.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import types
from pathlib import Path

from parity import _stats_harness as harness

GOLDEN_DIR = Path(__file__).resolve().parent.parent / "tests" / "parity" / "golden"
SHOTS = tuple(range(1, 17))
SEEDS = (1, 2, 3)
BASE2NEW_SHOTS = (1, 2, 4, 8, 16)

OFFICIAL = {"repo": "KaiyangZhou/CoOp", "also": "KaiyangZhou/Dassl.pytorch",
            "files": ["datasets/oxford_pets.py", "datasets/dtd.py", "datasets/eurosat.py", "datasets/caltech101.py",
                      "datasets/fgvc_aircraft.py", "dassl/data/datasets/base_dataset.py (generate_fewshot_dataset)",
                      "dassl/utils/tools.py (set_random_seed)"],
            "what": "the (shots, seed) train and val image lists of the few-shot draw, and base-to-new's base half"}
DEVIATIONS = [("ImageNet's few-shot draw is not compared", "CoOp's datasets/imagenet.py lists each class folder "
               "with os.listdir (the file system's order, unsorted), so its shots differ between official installs")]

# dataset -> the synthetic layout: class names (label order), images per class in train / val / test, and the
# seed that shuffles each split file's lines (so a class's images are not listed together).
LAYOUTS: dict[str, dict] = {
    "oxford_pets": {"classes": ["abyssinian", "american_bulldog", "Bengal", "great_pyrenees", "pug", "shiba_inu",
                                "yorkshire_terrier"],
                    "train": [20, 12, 25, 16, 17, 30, 9], "val": [5, 3, 6, 4, 8, 2, 5], "test": [3, 3, 3, 3, 3, 3, 3],
                    "shuffle_seed": 11},
    "dtd": {"classes": ["banded", "blotchy", "braided", "bubbly", "bumpy", "chequered", "cobwebbed"],
            "train": [24, 18, 16, 11, 27, 20, 15], "val": [4, 7, 3, 5, 6, 1, 4], "test": [2, 2, 2, 2, 2, 2, 2],
            "shuffle_seed": 12},
    "eurosat": {"classes": ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Highway or Road",
                            "Industrial Buildings", "Pasture Land"],
                "train": [26, 19, 16, 14, 22, 31], "val": [6, 4, 5, 3, 7, 4], "test": [2, 2, 2, 2, 2, 2],
                "shuffle_seed": 13},
    "caltech101": {"classes": ["face", "leopard", "motorbike", "accordion", "airplane", "anchor", "ant"],
                   "train": [30, 21, 16, 13, 25, 8, 18], "val": [6, 4, 2, 5, 7, 3, 4], "test": [2, 2, 2, 2, 2, 2, 2],
                   "shuffle_seed": 14},
    "fgvc_aircraft": {"classes": ["707-320", "727-200", "737-200", "A300B4", "F-16A/B", "Falcon 2000"],
                      "train": [17, 22, 16, 10, 19, 28], "val": [4, 6, 3, 5, 8, 2], "test": [2, 2, 2, 2, 2, 2],
                      "shuffle_seed": 15},
}

# dataset -> (folder under the data root, CoOp's module and class, image folder, split file) of CoOp's layout
COOP = {
    "oxford_pets": ("oxford_pets", "datasets.oxford_pets", "OxfordPets", "images", "split_zhou_OxfordPets.json"),
    "dtd": ("dtd", "datasets.dtd", "DescribableTextures", "images", "split_zhou_DescribableTextures.json"),
    "eurosat": ("eurosat", "datasets.eurosat", "EuroSAT", "2750", "split_zhou_EuroSAT.json"),
    "caltech101": ("caltech-101", "datasets.caltech101", "Caltech101", "101_ObjectCategories",
                   "split_zhou_Caltech101.json"),
    "fgvc_aircraft": ("fgvc_aircraft", "datasets.fgvc_aircraft", "FGVCAircraft", "images", None),
}


def _image_name(dataset: str, cname: str, label: int, i: int) -> str:
    """An image's path relative to the image folder, shaped like the real dataset's."""
    stem = f"{label:02d}{i:04d}"
    if dataset == "oxford_pets":
        return f"{cname}_{stem}.jpg"  # flat, breed in the name
    if dataset == "fgvc_aircraft":
        return f"{1000000 + label * 10000 + i}"  # an image id; the file is <id>.jpg
    return f"{cname.replace(' ', '')}/{cname.replace(' ', '')}_{stem}.jpg"


def split_lists(dataset: str, recipe: dict) -> dict[str, list[tuple[str, int, str]]]:
    """Each split's (relative image path or id, label, class name) lines in the split file's (shuffled) order."""
    rng = random.Random(recipe["shuffle_seed"])
    out, counter = {}, 0
    for part in ("train", "val", "test"):
        lines = []
        for label, (cname, n) in enumerate(zip(recipe["classes"], recipe[part])):
            for _ in range(n):
                lines.append((_image_name(dataset, cname, label, counter), label, cname))
                counter += 1
        rng.shuffle(lines)
        out[part] = lines
    return out


def build_layout(dataset: str, root: Path, recipe: dict | None = None) -> dict[str, list[str]]:
    """Write the layout of ``dataset`` under the data root ``root``: empty image files and CoOp's split files.

    Returns, per split, the images' absolute paths in the split file's order (what the indices refer to)."""
    recipe = recipe or LAYOUTS[dataset]
    folder, _, _, image_folder, split_file = COOP[dataset]
    base = Path(root) / folder
    image_dir = base / image_folder
    lists = split_lists(dataset, recipe)
    paths = {}
    for part, lines in lists.items():
        paths[part] = []
        for rel, _, _ in lines:
            path = image_dir / (f"{rel}.jpg" if dataset == "fgvc_aircraft" else rel)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            paths[part].append(str(path))
    if dataset == "fgvc_aircraft":
        (base / "variants.txt").write_text("".join(f"{c}\n" for c in recipe["classes"]))
        for part, lines in lists.items():
            (base / f"images_variant_{part}.txt").write_text("".join(f"{rel} {c}\n" for rel, _, c in lines))
    else:
        (base / split_file).write_text(json.dumps({p: [list(x) for x in lines] for p, lines in lists.items()}))
    return paths


def draw_key(shots: int, seed: int) -> str:
    return f"{shots}-{seed}"


# -- the official draw ------------------------------------------------------------------------------------------
def _import_official(dassl: Path, coop: Path):
    for path in (str(coop), str(dassl)):
        if path not in sys.path:
            sys.path.insert(0, path)
    try:
        import wilds  # noqa: F401  (only Dassl's WILDS datasets use it)
    except ImportError:
        sys.modules["wilds"] = types.SimpleNamespace(get_dataset=None)
    from dassl.utils import set_random_seed

    return set_random_seed


def _official_draw(dataset: str, root: Path, shots: int, seed: int, subsample: str, set_random_seed):
    """CoOp's dataset class built as train.py builds it: seeded first, then constructed; its train_x and val."""
    import importlib
    import shutil

    folder, module, cls, _, _ = COOP[dataset]
    shutil.rmtree(root / folder / "split_fewshot", ignore_errors=True)  # draw afresh, never read a cached pickle
    cfg = types.SimpleNamespace(DATASET=types.SimpleNamespace(ROOT=str(root), NUM_SHOTS=shots,
                                                              SUBSAMPLE_CLASSES=subsample), SEED=seed)
    set_random_seed(seed)
    data = getattr(importlib.import_module(module), cls)(cfg)
    return data.train_x, data.val


def _indices(items, index_of: dict[str, int], labels_of: dict[str, int]) -> list[int]:
    out = []
    for item in items:
        assert item.label == labels_of[item.impath], "base classes keep their labels (the first half)"
        out.append(index_of[item.impath])
    return out


def generate(dassl: Path, coop: Path) -> list[Path]:
    set_random_seed = _import_official(Path(dassl), Path(coop))
    written = []
    for dataset, recipe in LAYOUTS.items():
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            paths = build_layout(dataset, root, recipe)
            index = {part: {p: i for i, p in enumerate(paths[part])} for part in ("train", "val")}
            labels = {p: y for part in ("train", "val") for p, (_, y, _) in
                      zip(paths[part], split_lists(dataset, recipe)[part])}
            draws, base2new = {}, {}
            for shots in SHOTS:
                for seed in SEEDS:
                    train, val = _official_draw(dataset, root, shots, seed, "all", set_random_seed)
                    draws[draw_key(shots, seed)] = {"train": _indices(train, index["train"], labels),
                                                    "val": _indices(val, index["val"], labels)}
            for shots in BASE2NEW_SHOTS:
                for seed in SEEDS:
                    train, val = _official_draw(dataset, root, shots, seed, "base", set_random_seed)
                    base2new[draw_key(shots, seed)] = {"train": _indices(train, index["train"], labels),
                                                       "val": _indices(val, index["val"], labels)}
        golden = {"dataset": dataset,
                  "official": {**OFFICIAL, "commits": {"KaiyangZhou/CoOp": harness.commit_of(coop),
                                                       "KaiyangZhou/Dassl.pytorch": harness.commit_of(dassl)}},
                  "how": "CoOp's dataset class after dassl.utils.set_random_seed(seed), on the layout the recipe "
                         "builds (parity.fewshot.build_layout); indices into the split file's train / val lists",
                  "recipe": recipe, "draws": draws, "base2new": base2new}
        written.append(_write(GOLDEN_DIR / f"fewshot_{dataset}.json", golden))
    return written


def _write(path: Path, golden: dict) -> Path:
    """Compact JSON with one draw a line (small, and a changed draw shows as one changed line)."""
    head = {k: v for k, v in golden.items() if k not in ("recipe", "draws", "base2new")}
    text = json.dumps(head, indent=1)[:-2] + f',\n "recipe": {json.dumps(golden["recipe"])}'
    for part in ("draws", "base2new"):
        rows = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in golden[part].items())
        text += f",\n {json.dumps(part)}: {{\n{rows}\n }}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n}\n")
    json.loads(path.read_text())  # still JSON
    return path


def load(dataset: str) -> dict:
    return json.loads((GOLDEN_DIR / f"fewshot_{dataset}.json").read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dassl", required=True, type=Path, help="a Dassl.pytorch snapshot (git checkout)")
    parser.add_argument("--coop", required=True, type=Path, help="a CoOp snapshot (git checkout)")
    args = parser.parse_args(argv)
    for path in generate(args.dassl, args.coop):
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
