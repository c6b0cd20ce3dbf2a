"""Map sources: VLM backends and the non-VLM references, behind one registry."""

from .base import (KINDS, MAP_SOURCES, ImageSet, IntensityMaps, MapGenerator, NotDecoyMaps, OracleMaps, PromptSpec,
                   get_map_source, register_map_source, validate_maps)
from .cache import (CacheEntry, cache_meta, cached_maps, default_cache_dir, list_cached, load_map_set, read_cached,
                    resolve_maps)
from .clip import ClipBackedMaps, ClipMaps
from .clip_rules import RULES, VARIANTS
from .degraded import DEGRADATIONS, DegradedOracleMaps
from .diagnostics import format_report, map_quality, map_report, mass_share
from .gals import GalsMaps
from .images import ImageSplit, as_split, folder_maps, load_image_folder
from .precomputed import PrecomputedMaps
from .weclip import WeCLIPMaps
from .weights import DEFAULT_CLIP, Pretrained, load_clip, load_dino
from ..hub import VLM_EXTRA, require_vlm_extra

__all__ = ["KINDS", "MAP_SOURCES", "ImageSet", "IntensityMaps", "MapGenerator", "NotDecoyMaps", "OracleMaps",
           "PromptSpec", "get_map_source", "register_map_source", "validate_maps", "CacheEntry", "cache_meta",
           "cached_maps", "read_cached",
           "default_cache_dir", "list_cached", "load_map_set", "resolve_maps", "RULES", "VARIANTS", "ClipBackedMaps",
           "ClipMaps", "GalsMaps",
           "DEGRADATIONS", "DegradedOracleMaps", "format_report", "map_quality", "map_report", "mass_share",
           "ImageSplit", "as_split", "folder_maps", "load_image_folder", "PrecomputedMaps", "WeCLIPMaps",
           "DEFAULT_CLIP", "VLM_EXTRA", "Pretrained", "load_clip", "load_dino", "require_vlm_extra"]
