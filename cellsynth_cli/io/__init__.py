"""Volumes on disk: OME-Zarr (NGFF 0.5, zarr v3) groups in and out, TIFF in.

One volume is one group `DIR/NAME.zarr`: the intensity image as array `0` (the sketch when
there is no image, so viewers show something), the float32 sketch as array `sketch`, instance
masks as the label image `labels/cells`, provenance under the group attribute `cellsynth`.
Writes are atomic: a hidden temporary sibling is renamed into place.

Modules: `volume` (the Volume and its checks), `read`, `write`, `outputs` (what a stage finds
on disk before it starts), `intensity`, `preview`, `export`. The names below are the package's
interface, used as `io.read_volume(...)`.
"""

from cellsynth_cli.io.outputs import (
    existing_outputs,
    file_checksum,
    outputs_to_keep,
    provenance,
    remove_temporaries,
    written_by_run,
)
from cellsynth_cli.io.read import (
    list_volumes,
    read_images,
    read_provenance,
    read_volume,
    read_volumes,
)
from cellsynth_cli.io.volume import (
    LABEL_NAME,
    MASKS_SUFFIX,
    NGFF_VERSION,
    SIMULATE_STAGE,
    TIFF_SUFFIXES,
    Volume,
    volume_name,
    volume_path,
)
from cellsynth_cli.io.write import (
    atomic_file,
    is_enospc,
    to_jsonable,
    write_text,
    write_volume,
)

__all__ = [
    "LABEL_NAME",
    "MASKS_SUFFIX",
    "NGFF_VERSION",
    "SIMULATE_STAGE",
    "TIFF_SUFFIXES",
    "Volume",
    "atomic_file",
    "existing_outputs",
    "file_checksum",
    "is_enospc",
    "list_volumes",
    "outputs_to_keep",
    "provenance",
    "read_images",
    "read_provenance",
    "read_volume",
    "read_volumes",
    "remove_temporaries",
    "to_jsonable",
    "volume_name",
    "volume_path",
    "write_text",
    "write_volume",
    "written_by_run",
]
