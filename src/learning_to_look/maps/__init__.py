"""Map sources: VLM backends and the non-VLM references, behind one registry."""

from .base import (KINDS, MAP_SOURCES, IntensityMaps, MapGenerator, OracleMaps, PromptSpec, get_map_source,
                   register_map_source, validate_maps)

__all__ = ["KINDS", "MAP_SOURCES", "IntensityMaps", "MapGenerator", "OracleMaps", "PromptSpec", "get_map_source",
           "register_map_source", "validate_maps"]
