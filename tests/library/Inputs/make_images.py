"""Images for the library tests, at a model's input size: an ImageFolder
tree to train a few steps on (DIR/train/CLASS/N.png), and COUNT images to
predict (DIR/predict/NNN.png) with their pixels also in DIR/predict.u8 (each
image C x H x W bytes, in file order) for a C program to read.

usage: make_images.py DIR CHANNELS HEIGHT WIDTH COUNT SEED CLASS... [--rgb H W]

--rgb H W: the images to predict are RGB photos of H x W pixels instead,
whatever the model's size and channels, their pixels in DIR/predict.hwc
(H x W x 3 bytes each, interleaved) for NAME_predict_rgb8.
"""
import os
import random
import struct
import sys
import zlib


def png(path, c, h, w, hwc):
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data +
                struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff))
    rows = b"".join(b"\0" + bytes(hwc[y * w * c:(y + 1) * w * c]) for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0 if c == 1 else 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) +
                chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def main():
    args = sys.argv[1:]
    rgb = None
    if "--rgb" in args:
        at = args.index("--rgb")
        rgb = int(args[at + 1]), int(args[at + 2])
        del args[at:at + 3]
    out, c, h, w, count, seed = args[0], *map(int, args[1:6])
    classes = args[6:]
    rng = random.Random(seed)

    def image(c=c, h=h, w=w):
        # Smooth gradients plus noise: values spread over 0-255.
        a, b = rng.random(), rng.random()
        return [min(255, max(0, int(128 + 100 * ((x * a + y * b) / (w + h) - 0.3 + k * 0.2)
                                    + rng.randint(-40, 40))))
                for y in range(h) for x in range(w) for k in range(c)]

    for k, name in enumerate(classes):
        os.makedirs(os.path.join(out, "train", name), exist_ok=True)
        for i in range(8):
            png(os.path.join(out, "train", name, "%d.png" % i), c, h, w, image())
    os.makedirs(os.path.join(out, "predict"), exist_ok=True)
    raw = bytearray()
    for i in range(count):
        if rgb:
            hwc = image(3, *rgb)
            png(os.path.join(out, "predict", "%03d.png" % i), 3, rgb[0], rgb[1], hwc)
            raw += bytes(hwc)
            continue
        hwc = image()
        png(os.path.join(out, "predict", "%03d.png" % i), c, h, w, hwc)
        raw += bytes(hwc[(y * w + x) * c + k] for k in range(c) for y in range(h) for x in range(w))
    with open(os.path.join(out, "predict.hwc" if rgb else "predict.u8"), "wb") as f:
        f.write(raw)


if __name__ == "__main__":
    main()
