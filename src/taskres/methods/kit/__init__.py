"""The machinery the methods share, beside the methods (``taskres.methods``), never a method itself.

``training``: the training loop, batches, optimisers and schedules. ``samples``: the training images as one
matrix or streamed samples, class moments. ``heads``: the shared classifier heads and zero-shot logits.
``search``: choosing on the few-shot validation split (top-1, grids). ``text_encoder``: the text tower for
methods that learn through it. ``text_recipe``: how each original builds its zero-shot text classifier.
"""
