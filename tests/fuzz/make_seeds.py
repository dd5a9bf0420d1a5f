#!/usr/bin/python3
# Writes the seed corpora of the runtime's binary-format fuzzers (cifar, idx,
# jpeg, png, safetensors) into OUT/NAME/: tiny valid files, made of patterns (no data set's
# data), each format's variants once. Generated, never committed:
# scripts/fuzz.sh runs it into build/fuzz/seeds, and tests that need small
# photos of odd kinds (progressive, CMYK, grey JPEGs) run it into their
# temporary directory. Needs Debian's python3 with python3-pil (the JPEGs).
#   /usr/bin/python3 tests/fuzz/make_seeds.py OUT
import gzip
import json
import io
import os
import struct
import sys
import zlib

from PIL import Image

if len(sys.argv) != 2:
    sys.exit("usage: make_seeds.py OUT  (writes OUT/cifar, OUT/idx, OUT/jpeg, OUT/png, OUT/safetensors)")
root = sys.argv[1]


def write(fuzzer, name, data):
    d = os.path.join(root, fuzzer)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def pattern(n, seed):
    return bytes((i * 37 + seed * 11 + (i >> 5) * 3) & 0xFF for i in range(n))


# CIFAR-10: a byte picking the model (fuzz_cifar.c's table), then records of
# one label byte and 3072 pixel bytes (1024 R, 1024 G, 1024 B).
def cifar(labels):
    return b"".join(bytes([l]) + pattern(3072, l) for l in labels)


write("cifar", "one-record", b"\x00" + cifar([3]))
write("cifar", "two-records-grey", b"\x01" + cifar([0, 9]))
write("cifar", "three-classes", b"\x02" + cifar([2]))
write("cifar", "needs-convert", b"\x03" + cifar([1]))
write("cifar", "label-out-of-range", b"\x02" + cifar([7]))
write("cifar", "short", b"\x00" + cifar([1])[:100])


# IDX: a byte picking the model (fuzz_idx.c's table), the labels file's
# length, the labels file (magic 0x0801, N), then the images file (0x0803:
# N, H, W, or 0x0804: N, C, H, W). Big-endian sizes.
def idx(dims, data):
    return struct.pack(">BBBB", 0, 0, 8, len(dims)) + struct.pack(">%dI" % len(dims), *dims) + data


def idx_pair(model, labels, image_dims, gz=False):
    lab = idx([len(labels)], bytes(labels))
    n = 1
    for d in image_dims:
        n *= d
    img = idx(image_dims, pattern(n, len(labels)))
    if gz:
        lab, img = gzip.compress(lab, mtime=0), gzip.compress(img, mtime=0)
    assert len(lab) < 256
    return bytes([model, len(lab)]) + lab + img


write("idx", "mnist-shape", idx_pair(0, [5], [1, 28, 28]))
write("idx", "idx3-resized", idx_pair(2, [0, 1, 2], [3, 4, 6]))
write("idx", "idx4-rgb", idx_pair(1, [4, 7], [2, 3, 4, 4]))
write("idx", "idx4-grey", idx_pair(2, [1, 0], [2, 1, 5, 3]))
write("idx", "idx4-needs-resize", idx_pair(3, [1], [1, 3, 5, 5]))
write("idx", "gzip", idx_pair(2, [2, 1], [2, 6, 5], gz=True))
write("idx", "count-mismatch", idx_pair(2, [1, 2, 0], [2, 4, 4]))


# JPEG, through PIL (libjpeg): baseline, progressive, grey, CMYK (Adobe),
# 4:4:4 and 4:2:0, optimized Huffman tables.
def jpeg(mode, size, **opts):
    w, h = size
    c = len(Image.new(mode, (1, 1)).getbands())
    im = Image.frombytes(mode, size, pattern(w * h * c, w + h))
    out = io.BytesIO()
    im.save(out, "JPEG", quality=50, **opts)
    return out.getvalue()


write("jpeg", "rgb-8x8.jpg", jpeg("RGB", (8, 8)))
write("jpeg", "rgb-444-optimized.jpg", jpeg("RGB", (9, 7), subsampling=0, optimize=True))
write("jpeg", "rgb-progressive.jpg", jpeg("RGB", (17, 16), progressive=True))
write("jpeg", "grey.jpg", jpeg("L", (16, 5)))
write("jpeg", "grey-progressive.jpg", jpeg("L", (8, 9), progressive=True, optimize=True))
write("jpeg", "cmyk.jpg", jpeg("CMYK", (8, 8)))
write("jpeg", "rgb-420-odd.jpg", jpeg("RGB", (13, 11), subsampling=2))


# PNG, by hand (zlib and CRCs): every colour type and bit depth, each of
# the five row filters, a palette with transparency, Adam7 interlacing and
# ancillary chunks.
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def filtered(rows, bpp):
    """Each row filtered with type y % 5."""
    out, prev = b"", bytes(len(rows[0]) if rows else 0)
    for y, row in enumerate(rows):
        t = y % 5
        f = bytearray()
        for i, x in enumerate(row):
            a = row[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            pred = [0, a, b, (a + b) // 2, paeth(a, b, c)][t]
            f.append((x - pred) & 0xFF)
        out += bytes([t]) + bytes(f)
        prev = row
    return out


SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2)]


def png(w, h, depth, ctype, interlace=False, extra=b"", palette=None, trns=None):
    bits = depth * SAMPLES[ctype]
    bpp = max(1, bits // 8)
    row_bytes = lambda width: (width * bits + 7) // 8
    raw = pattern(row_bytes(w) * h, w * h + depth)
    if palette is not None and depth == 8:  # indices within the palette (smaller
        raw = bytes(b % (len(palette) // 3) for b in raw)  # depths: full palettes)
    if not interlace:
        rows = [raw[y * row_bytes(w):(y + 1) * row_bytes(w)] for y in range(h)]
        data = filtered(rows, bpp)
    else:  # the passes' sub-images, each filtered on its own (whole bytes only)
        assert bits % 8 == 0
        px = [[raw[(y * w + x) * bpp:(y * w + x + 1) * bpp] for x in range(w)] for y in range(h)]
        data = b""
        for x0, y0, dx, dy in ADAM7:
            rows = [b"".join(px[y][x] for x in range(x0, w, dx)) for y in range(y0, h, dy)]
            rows = [r for r in rows if r]
            if rows:
                data += filtered(rows, bpp)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, int(interlace))
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra
    if palette is not None:
        out += chunk(b"PLTE", palette)
    if trns is not None:
        out += chunk(b"tRNS", trns)
    return out + chunk(b"IDAT", zlib.compress(data, 9)) + chunk(b"IEND", b"")


write("png", "grey8.png", png(6, 5, 8, 0))
write("png", "grey1.png", png(9, 3, 1, 0))
write("png", "grey2.png", png(5, 4, 2, 0, trns=b"\x00\x01"))
write("png", "grey4.png", png(7, 2, 4, 0))
write("png", "grey16.png", png(3, 5, 16, 0))
write("png", "rgb8.png", png(5, 6, 8, 2, trns=b"\x00\x01\x00\x02\x00\x03"))
write("png", "rgb16.png", png(4, 5, 16, 2))
write("png", "palette8.png", png(5, 5, 8, 3, palette=bytes(range(0, 30)), trns=b"\x00\x80"))
write("png", "palette4.png", png(6, 5, 4, 3, palette=bytes(range(0, 48))))
write("png", "palette2.png", png(7, 5, 2, 3, palette=bytes(range(0, 12))))
write("png", "palette1.png", png(9, 5, 1, 3, palette=bytes(range(0, 6))))
write("png", "grey-alpha.png", png(4, 5, 8, 4))
write("png", "grey-alpha16.png", png(3, 5, 16, 4))
write("png", "rgba8.png", png(5, 5, 8, 6))
write("png", "rgba16.png", png(2, 5, 16, 6))
write("png", "interlaced-rgb.png", png(9, 9, 8, 2, interlace=True))
write("png", "interlaced-grey.png", png(3, 7, 8, 0, interlace=True))
write("png", "ancillary.png",
      png(4, 4, 8, 2, extra=chunk(b"gAMA", struct.pack(">I", 45455)) +
          chunk(b"tEXt", b"Comment\x00seed") +
          chunk(b"zTXt", b"Note\x00\x00" + zlib.compress(b"a compressed note")) +
          chunk(b"pHYs", struct.pack(">IIB", 2835, 2835, 1))))


# safetensors: an 8-byte little-endian header length, the JSON header, the
# data. A checkpoint of xentcc's (weights, then SGD's optimizer state with
# the progress in __metadata__), the dtypes PyTorch writes, zero-sized and
# oddly named tensors, and the two inputs that were findings (a header
# longer than the file, a shape whose size disagrees with its offsets).
def safetensors(entries, metadata=None, spacing=b"", tail=b""):
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in entries:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode() + spacing
    return struct.pack("<Q", len(text)) + text + data + tail


def floats(n, seed):
    return struct.pack("<%df" % n, *((((i * 37 + seed * 11) % 201) - 100) / 512 for i in range(n)))


ce_layers = [("conv1.weight", [4, 3, 3, 2]), ("bn1.weight", [4]), ("bn1.bias", [4]),
             ("layers.4.weight", [5, 4, 1, 1]), ("layers.4.bias", [5]),
             ("head.weight", [3, 30]), ("head.bias", [3])]


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


weights = [(n, "F32", s, floats(numel(s), i)) for i, (n, s) in enumerate(ce_layers)]
weights += [("bn1.running_mean", "F32", [4], floats(4, 20)), ("bn1.running_var", "F32", [4], floats(4, 21)),
            ("bn1.num_batches_tracked", "I64", [], struct.pack("<q", 24))]
write("safetensors", "xentcc-weights",
      safetensors(weights, {"format": "pt", "model": "options_ce"}, b"   "))
progress = {"format": "pt", "model": "options_ce", "step": "24", "epoch": "3", "iter": "0",
            "steps_per_epoch": "8", "weights_sha256": "42" * 32}
optim = [(n + ".momentum_buffer", "F32", s, floats(numel(s), 30 + i)) for i, (n, s) in enumerate(ce_layers)]
write("safetensors", "xentcc-optim", safetensors(optim, progress, b"   "))
wrong_shape = [(n, d, [4, 3, 6, 4] if n == "conv1.weight.momentum_buffer" else s, raw) for n, d, s, raw in optim]
write("safetensors", "finding-leak-shape-in-size-message", safetensors(wrong_shape, progress, b"   "))
dtypes = [("a", "F16", [2], b"\x00\x3c\x00\xc0"), ("b", "BF16", [1, 1], b"\x40\xc0"),
          ("c", "F64", [1], struct.pack("<d", 0.5)), ("n", "I64", [], struct.pack("<q", 7)),
          ("m", "U8", [2], b"\x01\x02")]
write("safetensors", "python-dtypes", safetensors(dtypes, {"format": "pt"}, b"  "))
short = safetensors(dtypes, {"format": "pt"})
write("safetensors", "finding-leak-header-in-a-short-file", short[:8] + short[8:60] + short[120:])
# Zero-sized tensors, escapes in names, a null __metadata__ among the
# tensors and an unknown key holding every JSON kind.
odd = {"e\u00e9\U0001f600": {"dtype": "F32", "shape": [0, 3], "data_offsets": [0, 0]},
       "x": {"dtype": "BOOL", "shape": [3], "data_offsets": [0, 3]},
       "z": {"dtype": "F32", "shape": [0], "data_offsets": [3, 3]}, "__metadata__": None,
       "q\"\\/\b\f\n\r\t": {"dtype": "I8", "shape": [1], "data_offsets": [3, 4],
                         "extra": [1, -2.5e3, True, False, None, {"k": "v"}]}}
text = json.dumps(odd, separators=(",", ":")).encode()
write("safetensors", "zero-size", struct.pack("<Q", len(text)) + text + b"\x01\x00\x01\x05")
write("safetensors", "empty", safetensors([], None, b"      "))
