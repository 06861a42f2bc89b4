"""The frozen text encoder taken apart, for methods that learn through it (CoOp, TaskRes*).

It mirrors open_clip's ``CLIP.encode_text`` step by step (token embedding, positional embedding, the
transformer with its causal mask, ``ln_final``, pooling by ``text_pool_type``, ``text_projection``) so that
a method can feed its own token embeddings (CoOp's context vectors) or swap the projection (TaskRes*).
``encode(tokens) == model.encode_text(tokens)`` is checked in the tests.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from ..base import TrainingError


class TextTower:
    """The text side of an open_clip model: CLIP (RN50, ViT-*) or CustomTextCLIP with a text transformer."""

    def __init__(self, backbone):
        model = backbone.model
        name = backbone.identity.get("model", type(model).__name__)
        if hasattr(model, "token_embedding") and hasattr(model, "transformer"):  # open_clip's CLIP
            tower, pool, eos = model, model.text_pool_type, getattr(model, "text_eos_id", None)
            mask = model.attn_mask
        elif hasattr(getattr(model, "text", None), "token_embedding"):  # CustomTextCLIP + TextTransformer
            tower = model.text
            if getattr(tower, "cls_emb", None) is not None or getattr(tower, "use_pad_mask", False):
                raise TrainingError(f"backbone {name}: its text transformer appends a class token or masks "
                                    "padding; learning through it is not supported (use a CLIP-style model)")
            pool, eos, mask = tower.pool_type, getattr(tower, "eos_id", None), tower.attn_mask
        else:
            raise TrainingError(f"backbone {name} has no open_clip text transformer to learn through "
                                "(e.g. a Hugging Face text tower); choose a CLIP-style model")
        self.token_embedding = tower.token_embedding
        self.positional_embedding = tower.positional_embedding
        self.transformer = tower.transformer
        self.ln_final = tower.ln_final
        self.text_projection = tower.text_projection
        self.attn_mask = mask
        self.causal = self._is_causal(mask)
        self.pool_type = pool
        self.eos_id = eos
        self.tokenizer = backbone.tokenizer
        self.device = backbone.device
        self.context_length = int(self.positional_embedding.shape[0])
        self.width = int(self.token_embedding.weight.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the transformer computes in (its weights'): float32 normally, float64 or float16 copies."""
        cast = self.transformer.get_cast_dtype() if hasattr(self.transformer, "get_cast_dtype") else None
        return cast if cast is not None else self.token_embedding.weight.dtype

    def converted(self, dtype: torch.dtype) -> "TextTower":
        """A copy whose transformer and projection hold their weights in ``dtype`` (the model is not touched).

        For float16 this is what OpenAI's ``clip/model.py: convert_weights`` does to CLIP, the fp16 model
        CoOp trains through (``TRAINER.COOP.PREC = "fp16"``): linear and attention weights and
        ``text_projection`` in fp16, LayerNorms kept in fp32 (computing on fp16 inputs, fp16 out), the
        token table in fp32 (its rows are cast where used). Costs one copy of the text transformer.
        """
        if dtype == self.dtype:
            return self
        tower = copy.copy(self)
        tower.transformer = copy.deepcopy(self.transformer).to(dtype)
        for module in tower.transformer.modules():
            if isinstance(module, nn.LayerNorm):
                module.float()
        proj = self.text_projection
        if isinstance(proj, nn.Module):
            tower.text_projection = copy.deepcopy(proj).to(dtype)
        elif proj is not None:
            tower.text_projection = proj.detach().to(dtype)
        return tower

    # -- tokens ----------------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts).to(self.device)

    def token_count(self, text: str) -> int | None:
        """Tokens of ``text`` without start/end tokens, when the tokenizer can say (CLIP's BPE can)."""
        encode = getattr(self.tokenizer, "encode", None)
        return len(encode(text)) if callable(encode) else None

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(tokens)

    # -- the forward pass, in open_clip's order ----------------------------------------------------------
    def pooled(self, embeddings: torch.Tensor, tokens: torch.Tensor, prefix_only: bool = False) -> torch.Tensor:
        """Token embeddings [N, L, width] -> the pooled (EOT) feature before the projection [N, width].

        ``prefix_only``: run the transformer on the positions the pooled feature depends on (below); the
        same features to round-off (~1e-6), not bit for bit, so training steps use it and final features not.
        """
        from open_clip.transformer import text_global_pool

        cast = self.transformer.get_cast_dtype() if hasattr(self.transformer, "get_cast_dtype") else None
        x = embeddings if cast is None else embeddings.to(cast)
        pos = self.positional_embedding if cast is None else self.positional_embedding.to(cast)
        # Under a causal mask, position i only sees positions <= i: the pooled (EOT) feature does not depend
        # on the padding after the last EOT of the batch, so the transformer runs on the prefix alone (CLIP's
        # 77 positions hold ~20 real tokens in a CoOp prompt: 3-4x less work per step, the same features).
        length = self._needed_length(tokens) if prefix_only else tokens.shape[1]
        x = x[:, :length] + pos[:length]
        mask = self.attn_mask if self.attn_mask is None else self.attn_mask[:length, :length]
        x = self.transformer(x, attn_mask=mask)
        x = self.ln_final(x)
        return text_global_pool(x, tokens[:, :length], self.pool_type, eos_token_id=self.eos_id)

    def _needed_length(self, tokens: torch.Tensor) -> int:
        """Positions the pooled feature depends on: up to the batch's last pooled token under a causal mask,
        every position otherwise (no mask, a non-causal one, or pooling that reads the last position)."""
        full = tokens.shape[1]
        if self.pool_type not in ("argmax", "eos") or not self.causal:
            return full
        if self.pool_type == "argmax":
            idx = tokens.argmax(dim=-1)
        else:
            idx = (tokens == self.eos_id).int().argmax(dim=-1)
        return min(full, int(idx.max()) + 1)

    @staticmethod
    def _is_causal(mask: torch.Tensor | None) -> bool:
        """True for open_clip's additive causal mask (-inf above the diagonal, 0 elsewhere)."""
        if mask is None or not mask.is_floating_point() or mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
            return False
        upper = torch.triu(torch.ones_like(mask, dtype=torch.bool), diagonal=1)
        return bool(torch.equal(torch.isneginf(mask), upper) and not mask[~upper].any())

    def projection(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The projection as (P [width, D], bias or None): x @ P + bias. (None, None) if the model has none."""
        proj = self.text_projection
        if proj is None:
            return None, None
        if isinstance(proj, nn.Linear):
            return proj.weight.t(), proj.bias
        return proj, None

    @staticmethod
    def project(pooled: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None = None) -> torch.Tensor:
        if weight is None:
            return pooled
        out = pooled @ weight.to(pooled.dtype)
        return out if bias is None else out + bias.to(out.dtype)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        weight, bias = self.projection()
        return self.project(self.pooled(self.embed(tokens), tokens), weight, bias)

    @torch.no_grad()
    def pre_projection(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Pooled features before ``text_projection`` [N, width], float32 on the CPU."""
        out = []
        for i in range(0, len(texts), batch_size):
            tokens = self.tokenize(texts[i:i + batch_size])
            out.append(self.pooled(self.embed(tokens), tokens).float().cpu())
        return torch.cat(out)
