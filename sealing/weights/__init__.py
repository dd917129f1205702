"""Sealed model weights: seal safetensors shards to a data key; open them only with it.

Public surface (everything else in this package is private):

* ``seal_file`` / ``seal_bytes`` and ``open_sealed_file`` / ``open_bytes``: one sealed file.
* ``encode_manifest`` / ``open_manifest`` / ``parse_manifest`` / ``manifest_digest``: the sealed
  manifest that binds the files of one model version together.
* ``read_safetensors_layout``: the encrypted safetensors header of an opened shard.
* ``read_files_into``: several opened files decrypted in one pass over a thread pool.
* ``key_fingerprint``: the public default key id of a data key.

The data key (DEK) is always an argument. It is produced when a model is sealed, goes to the
key broker, and comes back to an attested enclave by HPKE; nothing here stores it.
Byte layout and threat comparison: docs/formats/sealed-weights.md.
"""

from sealing.weights._chunks import PositionalSink, PositionalSource, Progress
from sealing.weights._format import (
    DEFAULT_CHUNK_LOG2,
    FORMAT_VERSION,
    MAX_CHUNK_LOG2,
    MAX_PLAINTEXT_BYTES,
    MIN_CHUNK_LOG2,
    FileKind,
    ShardHeader,
    parse_shard_header,
)
from sealing.weights._keys import DEK_BYTES, key_fingerprint
from sealing.weights._manifest import (
    MAX_ENTRIES,
    MAX_MANIFEST_BYTES,
    Manifest,
    ManifestEntry,
    encode_manifest,
    manifest_digest,
    open_manifest,
    parse_manifest,
)
from sealing.weights._safetensors import DTYPE_BITS, SafetensorsLayout, TensorInfo
from sealing.weights.recipes import (
    DEFAULT_CHUNK_SIZE,
    MAX_SMALL_FILE_BYTES,
    BytesSource,
    Rng,
    SealedFile,
    entry_for,
    open_bytes,
    open_sealed_file,
    open_small_file,
    parse_index,
    read_files_into,
    read_safetensors_layout,
    read_shard_header,
    seal_bytes,
    seal_file,
)

__all__ = [
    "DEFAULT_CHUNK_LOG2",
    "DEFAULT_CHUNK_SIZE",
    "DEK_BYTES",
    "DTYPE_BITS",
    "FORMAT_VERSION",
    "MAX_CHUNK_LOG2",
    "MAX_ENTRIES",
    "MAX_MANIFEST_BYTES",
    "MAX_PLAINTEXT_BYTES",
    "MAX_SMALL_FILE_BYTES",
    "MIN_CHUNK_LOG2",
    "BytesSource",
    "FileKind",
    "Manifest",
    "ManifestEntry",
    "PositionalSink",
    "PositionalSource",
    "Progress",
    "Rng",
    "SafetensorsLayout",
    "SealedFile",
    "ShardHeader",
    "TensorInfo",
    "encode_manifest",
    "entry_for",
    "key_fingerprint",
    "manifest_digest",
    "open_bytes",
    "open_manifest",
    "open_sealed_file",
    "open_small_file",
    "parse_index",
    "parse_manifest",
    "parse_shard_header",
    "read_files_into",
    "read_safetensors_layout",
    "read_shard_header",
    "seal_bytes",
    "seal_file",
]
