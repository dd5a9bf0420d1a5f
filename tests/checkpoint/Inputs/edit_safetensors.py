#!/usr/bin/env python3
"""Edits a safetensors file in place, as a user or a damaged disk might,
for the tests of --resume's checks:

  edit_safetensors.py FILE KEY=VALUE...   set __metadata__ keys (KEY=- removes)
  edit_safetensors.py FILE +NAME          add an F32 scalar tensor NAME

The tensors' bytes are kept as they are; only the header changes.
"""
import json
import struct
import sys


def main():
    path = sys.argv[1]
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.setdefault("__metadata__", {})
    for edit in sys.argv[2:]:
        if edit.startswith("+"):
            header[edit[1:]] = {"dtype": "F32", "shape": [],
                                "data_offsets": [len(data), len(data) + 4]}
            data += struct.pack("<f", 1.0)
            continue
        key, value = edit.split("=", 1)
        if value == "-":
            meta.pop(key, None)
        else:
            meta[key] = value
    text = json.dumps(header, separators=(",", ":")).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


if __name__ == "__main__":
    main()
