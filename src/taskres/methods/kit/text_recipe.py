"""How each method's original code turns class names and templates into its zero-shot text classifier.

The originals differ in three ways, and each method declares its choice once, as a ``TextRecipe`` on its
class (``Method.text_recipe``), citing the file it follows:

- class names: prompted as written (TaskRes, CLAP) or with "_" turned into spaces (CoOp, CoOp's zero-shot
  trainers, CLIP-Adapter, Tip-Adapter, LP++, GDA: ``name.replace("_", " ")``);
- templates: the dataset's own, or the original's own set on ImageNet (Tip-Adapter, LP++ and GDA: 7
  templates; CoOp's zero-shot and CLIP-Adapter: "a photo of a {}."), or ZeroshotCLIP2's ensemble;
- the mean over templates: of the raw embeddings (TaskRes's base), or of each template's embeddings
  normalised first, the mean normalised again (Tip-Adapter's ``clip_classifier``, ZeroshotCLIP2).

The classifier's saved class names stay the dataset's (what a user sees); only the prompts change.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

# ImageNet and the four shift sets read with its classes: the names on which an original may use its own
# ImageNet templates instead of the dataset's (our readers give them TaskRes's 8-template ensemble).
IMAGENET_FAMILY = ("imagenet", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")
NAME_STYLES = ("raw", "spaces")


@dataclass(frozen=True)
class TextRecipe:
    """One original's way to build the text classifier t [C, D] (see the module docstring)."""

    source: str  # the official file(s) this recipe follows
    names: str = "raw"  # "raw": class names as written | "spaces": "_" -> " " before prompting
    templates: tuple[str, ...] | None = None  # fixed templates for every dataset (None: the dataset's own)
    imagenet_templates: tuple[str, ...] | None = None  # on IMAGENET_FAMILY instead of the dataset's own
    ensemble: tuple[str, ...] = ()  # ZeroshotCLIP2: these first, then the dataset's own unless on "imagenet"
    normalize: bool = False  # each template's embeddings normalised before the mean, the mean normalised

    def __post_init__(self):
        if self.names not in NAME_STYLES:
            raise ValueError(f"TextRecipe names must be one of {', '.join(NAME_STYLES)}, not {self.names!r}")

    def prompt_names(self, classnames: list[str]) -> list[str]:
        return [c.replace("_", " ") for c in classnames] if self.names == "spaces" else list(classnames)

    def task_templates(self, task_name: str, dataset_templates: list[str]) -> list[str]:
        """The templates this recipe prompts with on dataset ``task_name``."""
        own = list(self.templates if self.templates is not None else dataset_templates)
        if self.imagenet_templates is not None and task_name in IMAGENET_FAMILY:
            own = list(self.imagenet_templates)
        if not self.ensemble:
            return own
        # zsclip.py ZeroshotCLIP2: `if cfg.DATASET.NAME != "ImageNet": templates += [CUSTOM_TEMPLATES[...]]`
        added = [] if task_name == "imagenet" else [t for t in own if t not in self.ensemble]
        return list(self.ensemble) + added

    def build(self, encode_texts, classnames: list[str], templates: list[str]) -> torch.Tensor:
        """t [C, D] from ``encode_texts`` (texts -> unnormalised embeddings) for already resolved prompt names
        and templates, in the dtype ``encode_texts`` returns."""
        if not templates:
            raise ValueError("at least one prompt template is needed")
        prompts = [tpl.format(name) for name in classnames for tpl in templates]
        feats = encode_texts(prompts).reshape(len(classnames), len(templates), -1)
        if not self.normalize:
            return feats.mean(dim=1)  # TaskRes's base: the mean of unnormalised embeddings
        return F.normalize(F.normalize(feats, dim=-1).mean(dim=1), dim=-1)

    def key(self) -> dict:
        """Everything that decides the classifier (the cited source aside), JSON-safe: a bench record made with
        another key is not reused."""
        return {"names": self.names, "normalize": self.normalize,
                "templates": None if self.templates is None else list(self.templates),
                "imagenet_templates": None if self.imagenet_templates is None else list(self.imagenet_templates),
                "ensemble": list(self.ensemble)}

    def builds_like(self, other: "TextRecipe") -> bool:
        """The same classifier on every dataset (the cited source aside)."""
        return replace(self, source="") == replace(other, source="")

    def describe(self, task_name: str, dataset_templates: list[str]) -> dict:
        """What a run records of the text classifier it was given."""
        return {"source": self.source, "names": self.names, "normalize": self.normalize,
                "templates": self.task_templates(task_name, dataset_templates)}


# -- the originals' recipes ------------------------------------------------------------------------------------
# The 7 ImageNet templates of Tip-Adapter datasets/imagenet.py ``imagenet_templates`` (the same list in GDA's
# mrflogs/ICLR24 datasets/imagenet.py and LP++'s FereshteShakeri/FewShot-CLIP-Strong-Baseline
# datasets/imagenet.py), which is also CoOp's trainers/imagenet_templates.py IMAGENET_TEMPLATES_SELECT.
IMAGENET_SELECT = ("itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
                   "a {} in a video game.", "art of the {}.", "a photo of the small {}.")
PHOTO = ("a photo of a {}.",)  # CUSTOM_TEMPLATES["ImageNet"] (and its variants) in CoOp's zsclip.py, clip_adapter.py

# geekyutao/TaskRes trainers/taskres.py _get_base_text_features: raw names, the dataset's CUSTOM template (on
# ImageNet the 7 select ones + "a photo of a {}.", our ImageNet readers' 8), the mean of unnormalised embeddings.
TASKRES = TextRecipe("geekyutao/TaskRes trainers/taskres.py (_get_base_text_features)")
# jusiro/CLAP trainers/adapters.py _get_base_text_features: TaskRes's recipe line for line.
CLAP = TextRecipe("jusiro/CLAP trainers/adapters.py (_get_base_text_features)")
# KaiyangZhou/CoOp trainers/zsclip.py ZeroshotCLIP: spaces, CUSTOM_TEMPLATES[dataset] ("a photo of a {}." on
# ImageNet and its variants), the embeddings normalised.
ZEROSHOT_CLIP = TextRecipe("KaiyangZhou/CoOp trainers/zsclip.py (ZeroshotCLIP)", names="spaces",
                           imagenet_templates=PHOTO, normalize=True)
# The same file's ZeroshotCLIP2: IMAGENET_TEMPLATES_SELECT + CUSTOM_TEMPLATES[dataset] (the 7 alone on ImageNet),
# each template normalised, the mean normalised.
ZEROSHOT_CLIP2 = TextRecipe("KaiyangZhou/CoOp trainers/zsclip.py (ZeroshotCLIP2)", names="spaces",
                            imagenet_templates=PHOTO, ensemble=IMAGENET_SELECT, normalize=True)
# "a photo of a {}." for every dataset, names with spaces (taskres's --set templates=single).
SINGLE_PHOTO = TextRecipe("KaiyangZhou/CoOp trainers/zsclip.py (ZeroshotCLIP, with one template everywhere)",
                          names="spaces", templates=PHOTO, normalize=True)
# KaiyangZhou/CoOp trainers/coop.py PromptLearner: `classnames = [name.replace("_", " ") ...]`; its text
# classifier (the zero-shot one beside CoOp's results) is ZeroshotCLIP's.
COOP = replace(ZEROSHOT_CLIP, source="KaiyangZhou/CoOp trainers/coop.py (PromptLearner) and zsclip.py")
# gaopengcuhk/CLIP-Adapter clip_adapter.py TextEncoder: `temp.format(c.replace('_', ' '))` with
# CUSTOM_TEMPLATES[dataset] ("a photo of a {}." on ImageNet), one template.
CLIP_ADAPTER = TextRecipe("gaopengcuhk/CLIP-Adapter clip_adapter.py (TextEncoder)", names="spaces",
                          imagenet_templates=PHOTO)
# gaopengcuhk/Tip-Adapter utils.py clip_classifier (names with spaces, each template normalised, the mean
# normalised) over datasets/<name>.py ``template`` (ImageNet: its 7 ``imagenet_templates``).
TIP_ADAPTER = TextRecipe("gaopengcuhk/Tip-Adapter utils.py (clip_classifier), datasets/*.py", names="spaces",
                         imagenet_templates=IMAGENET_SELECT, normalize=True)
# mrflogs/ICLR24 utils.py clip_classifier: Tip-Adapter's function and templates.
GDA = TextRecipe("mrflogs/ICLR24 utils.py (clip_classifier), datasets/*.py", names="spaces",
                 imagenet_templates=IMAGENET_SELECT, normalize=True)
# FereshteShakeri/FewShot-CLIP-Strong-Baseline utils.py clip_classifier: Tip-Adapter's function and templates.
LPP = TextRecipe("FereshteShakeri/FewShot-CLIP-Strong-Baseline utils.py (clip_classifier), datasets/*.py",
                 names="spaces", imagenet_templates=IMAGENET_SELECT, normalize=True)
