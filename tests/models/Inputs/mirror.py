"""An image and its mirror image, and the check that a model averaging the
logits of each image with its mirror's (data.test_augment: {horizontal_flip:
true}) gives the two the same logits, to the bit.

  mirror.py make DIR        DIR/a.png: 32x32 RGB noise; DIR/b.png: a, mirrored
  mirror.py check < JSON    NAME-eval --predict DIR --logits --json's output
"""
import json
import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../library/Inputs"))
from make_images import png  # noqa: E402


def main():
    if sys.argv[1] == "make":
        out, h, w = sys.argv[2], 32, 32
        os.makedirs(out, exist_ok=True)
        rng = random.Random(7)
        a = [rng.randrange(256) for _ in range(h * w * 3)]
        b = [a[(y * w + (w - 1 - x)) * 3 + c] for y in range(h) for x in range(w) for c in range(3)]
        png(os.path.join(out, "a.png"), 3, h, w, a)
        png(os.path.join(out, "b.png"), 3, h, w, b)
        return 0
    p = json.load(sys.stdin)["predictions"]
    la, lb = p[0]["logits"], p[1]["logits"]
    if la != lb:
        print(f"the image and its mirror differ: {la} against {lb}")
        return 1
    print(f"an image and its mirror: the same logits ({len(la)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
