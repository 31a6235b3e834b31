"""MXNet RecordIO, read and written natively (no mxnet import), byte-compatible with mxnet 1.9.

    format   frames, IRHeader records, the .idx index, the insightface layout and `property`
    reader   RecordReader: random access by key (mmap), scans, fork-safe
    writer   RecordWriter: the I/O strategy (batched frames, background thread, O_DIRECT)

    with RecordWriter("train.rec") as w:                  # train.idx beside it
        w.write(key, pack(IRHeader(0, 3.0, key, 0), jpeg))
    header, jpeg = unpack(RecordReader("train.rec").read(key))
"""
from .format import (IR_SIZE, MAGIC, MAGIC_BYTES, IRHeader, PackLayout, RecordIOError, RecordKeyError,
                     class_label, default_idx_path, frame, image_label, label_of, pack, pack_img, read_frame_at,
                     read_idx, read_layout, read_property, unpack, unpack_img, write_property)
from .reader import RecordReader
from .writer import RecordWriter, scalar_labels

__all__ = [
    "MAGIC", "MAGIC_BYTES", "IR_SIZE", "IRHeader", "RecordIOError", "RecordKeyError", "pack", "unpack", "label_of",
    "frame", "RecordWriter", "RecordReader", "pack_img", "unpack_img", "read_idx", "read_frame_at",
    "default_idx_path", "PackLayout", "read_layout", "read_property", "write_property", "image_label",
    "class_label", "scalar_labels",
]
