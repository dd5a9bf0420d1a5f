# Prints the direction bench/speed.py charges each kernel of a sweep
# layer's training step to, for a step laid out as xentcc's profile lists
# one: the rows of a 3x3 layer's --profile-csv, in the order they ran.
import importlib.util
import sys

spec = importlib.util.spec_from_file_location("speed", sys.argv[1])
speed = importlib.util.module_from_spec(spec)
sys.argv = sys.argv[:1]
spec.loader.exec_module(speed)

rows = [(k, layer) for k, layer in (
    ("conv2d", "pre"), ("pad", "pre"), ("transpose", "conv.weight"), ("conv2d", "conv"),
    ("linear", "fc"), ("linear_grad_input", ""), ("pad", "4"), ("transpose", "conv.weight"),
    ("conv2d_grad_input", ""), ("conv2d_grad_input", ""), ("interleave", ""),
    ("transpose", "pre.padded"), ("conv2d_grad_weight", "conv.weight.grad"),
    ("bias_grad", "conv.bias.grad"), ("transpose", "5"), ("conv2d_grad_weight", "pre.weight.grad"))]
dicts = [{"kernel": k, "layer": layer} for k, layer in rows]
for (k, layer), d in zip(rows, speed.directions(dicts)):
    print(f"{k} {layer or '-'}: {speed.DIRECTIONS[d] if d is not None else 'none'}")
