"""A compiled model's library from Python through ctypes, against PyTorch
1.13: the same weights in scripts/torch_model.py's Net (eval mode, under
torch.no_grad()) give the same logits for random images, n = 1, 7 and 64.

usage: ctypes_torch.py MODEL.yaml LIBNAME.so NAME WEIGHTS.safetensors
"""
import ctypes
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "scripts"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

import make_test_data as td  # noqa: E402
import torch_model as tm  # noqa: E402

RTOL = 1e-5  # of each row's largest logit: PyTorch sums in another order


def main():
    yaml_path, so, name, weights = sys.argv[1:5]
    with open(yaml_path) as f:
        spec = yaml.safe_load(f)
    net = tm.Net(spec)
    state, _ = td.read_safetensors(weights)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    net.eval()

    lib = ctypes.CDLL(so)
    f = lambda s: getattr(lib, "%s_%s" % (name, s))  # noqa: E731
    f("load").restype = ctypes.c_void_p
    f("load").argtypes = [ctypes.c_char_p]
    f("error").restype = ctypes.c_char_p
    f("predict").argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int,
                             ctypes.POINTER(ctypes.c_float)]
    f("free").argtypes = [ctypes.c_void_p]
    c, h, w = spec["input"]["channels"], spec["input"]["height"], spec["input"]["width"]
    classes = spec["classes"]
    names = (ctypes.c_char_p * len(classes)).in_dll(lib, "%s_class_names" % name)
    assert [s.decode() for s in names] == [str(x) for x in classes], list(names)

    missing = f("load")(b"/nonexistent.safetensors")
    print("missing: %s %s" % (missing, f("error")().decode()))
    m = f("load")(weights.encode())
    if not m:
        sys.exit("load: " + f("error")().decode())
    torch.manual_seed(0)
    worst = 0.0
    for n in (1, 7, 64):
        x = torch.randn(n, c, h, w)
        with torch.no_grad():
            ref = net(x).numpy()
        images = np.ascontiguousarray(x.numpy(), dtype=np.float32)
        out = np.zeros(ref.shape, dtype=np.float32)
        fp = ctypes.POINTER(ctypes.c_float)
        if f("predict")(m, images.ctypes.data_as(fp), n, out.ctypes.data_as(fp)) != 0:
            sys.exit("predict: " + f("error")().decode())
        rel = np.abs(out - ref).max(axis=1) / np.abs(ref).max(axis=1)
        worst = max(worst, float(rel.max()))
        if rel.max() > RTOL:
            i = int(rel.argmax())
            sys.exit("n=%d image %d: %s vs PyTorch's %s (%.3g relative)" % (n, i, out[i], ref[i], rel[i]))
        print("n=%d: %d images match PyTorch" % (n, n))
    f("free")(m)
    print("worst difference %.3g of the row's largest logit" % worst)


main()
