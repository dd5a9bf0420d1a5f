# A stand-in for the safetensors package, which Debian does not ship, so that
# the README's PyTorch snippet runs as written (tests/examples/readme-tour.test).
