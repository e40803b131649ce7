"""Data loading: layouts, decoding and the synthetic demo set; only this package knows layouts."""

from debias.data.decode import IMAGE_EXTENSIONS, UnreadableImage, decode_images, load_image
from debias.data.manifest import FaceData, Manifest, load_data, read_manifest
from debias.data.synth import write_shortcut_synthetic, write_synthetic

__all__ = [
    "IMAGE_EXTENSIONS",
    "FaceData",
    "Manifest",
    "UnreadableImage",
    "decode_images",
    "load_data",
    "load_image",
    "read_manifest",
    "write_shortcut_synthetic",
    "write_synthetic",
]
