"""Image features: extraction, an on-disk cache that cannot go stale, and the training sources built on it.

One room per job:

- ``keys``: what names an entry (backbone identity, transform/view, image list): :class:`View`, ``entry_key``;
- ``shards``: an entry's layout on disk and reading it back memory-mapped: :class:`CacheEntry`, :class:`CachedFeatures`;
- ``extract``: image files to encoder batches (DataLoader workers, encoder tuning);
- ``cache``: :class:`FeatureCache`, which encodes only what is missing and writes shards atomically;
- ``views``: :class:`CachedViews`, V augmented views per image held in memory;
- ``mapped``: :class:`MappedViews`, the same views read batch by batch from the memory-mapped cache;
- ``online``: :class:`OnlineAugmented`, fresh augmentation through the encoder at every step (the reference regime).
"""

from .cache import FeatureCache, valid_rows
from .extract import loader_workers, prepare_encoder
from .keys import CACHE_VERSION, View, default_cache_dir, entry_key, image_list_digest, path_seed
from .mapped import MappedViews
from .online import OnlineAugmented
from .shards import DEFAULT_SHARD_SIZE, STORE_DTYPES, CacheEntry, CachedFeatures
from .views import CachedViews

__all__ = ["CACHE_VERSION", "DEFAULT_SHARD_SIZE", "STORE_DTYPES", "CacheEntry", "CachedFeatures", "CachedViews",
           "FeatureCache", "MappedViews", "OnlineAugmented", "View", "default_cache_dir", "entry_key",
           "image_list_digest", "loader_workers", "path_seed", "prepare_encoder", "valid_rows"]
