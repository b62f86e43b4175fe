"""Converters from official dataset layouts to the manifest format (spec datasets.md §5).

One small module per layout family, each registering its converters in ``CONVERTERS``
(:mod:`.base`) with the files that identify the layout:

======================  ==========================================================
:mod:`.base`            registry, :func:`write_manifest`, list-file readers
:mod:`.reference_csvs`  the published split CSVs (or any root in the manifest format)
:mod:`.cub`             CUB-200-2011 / CUB-100, NABirds
:mod:`.folders`         class-folder trees (Flowers-12) and your own data (``folder``)
:mod:`.mat`             Stanford Cars, Stanford Dogs, Flowers-102 (SciPy)
:mod:`.aircraft`        FGVC-Aircraft
:mod:`.pets`            Oxford-IIIT Pets
:mod:`.food`            Food-101
:mod:`.vegfru`          VegFru
:mod:`.inat`            iNaturalist 2017
:mod:`.daf`             DAF:re (label files or the filtered crop list with the split rule)
:mod:`.moe`             moeImouto (published split files or the class folders)
:mod:`.ufgir`           Cotton80 / SoyLocal / SoyGlobal, SoyGene, SoyAgeing
:mod:`.pipeline`        :func:`source_kind`, :func:`run_converter`, :func:`validate_manifest`, :func:`prepare`
======================  ==========================================================

Nothing here decides where a manifest lives or when one is reused: that is
:mod:`fgir.data.resolve`, the one path from a dataset name and root to a manifest.
"""

from ..manifest import has_split_csvs
from . import aircraft, cub, daf, folders, food, inat, mat, moe, pets, reference_csvs, ufgir, vegfru  # noqa: F401
from .aircraft import convert_aircraft
from .base import CONVERTERS, IMAGE_EXTENSIONS, ConversionError, Converter, layout_description, write_manifest
from .cub import convert_cub, convert_nabirds
from .daf import convert_daf, dafre_split_counts, split_dafre
from .folders import (
    DEFAULT_SPLIT_FRACTIONS,
    carve_by_fractions,
    carve_counts,
    check_split_fractions,
    convert_class_folders,
    convert_folder,
    own_layout,
)
from .food import convert_food101
from .inat import convert_inat17
from .mat import convert_cars, convert_dogs, convert_flowers102
from .moe import convert_moeimouto
from .pets import convert_pets
from .pipeline import prepare, run_converter, source_kind, validate_manifest
from .reference_csvs import convert_reference_csvs, has_reference_csvs
from .ufgir import convert_soyageing, convert_soygene, convert_ufgir
from .vegfru import convert_vegfru

__all__ = [
    "CONVERTERS", "DEFAULT_SPLIT_FRACTIONS", "IMAGE_EXTENSIONS", "ConversionError", "Converter",
    "carve_by_fractions", "carve_counts", "check_split_fractions", "convert_aircraft", "convert_cars",
    "convert_class_folders", "convert_cub", "convert_daf", "convert_dogs", "convert_flowers102", "convert_moeimouto",
    "dafre_split_counts", "split_dafre",
    "convert_folder", "convert_food101", "convert_inat17", "convert_nabirds", "convert_pets",
    "convert_reference_csvs", "convert_soyageing", "convert_soygene", "convert_ufgir", "convert_vegfru",
    "has_reference_csvs", "has_split_csvs", "layout_description", "own_layout", "prepare", "run_converter",
    "source_kind", "validate_manifest", "write_manifest",
]
