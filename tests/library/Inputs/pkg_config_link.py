"""Builds C source SRC against library DIR/libNAME.a with the flags
pkg-config gives for xentcc.pc, as a user would write
cc SRC -IDIR -LDIR -lNAME $(pkg-config --cflags --libs xentcc) -o OUT.
usage: pkg_config_link.py PKG_CONFIG_PATH SRC DIR NAME OUT"""
import os
import subprocess
import sys

pc_path, src, lib_dir, name, out = sys.argv[1:6]
env = dict(os.environ, PKG_CONFIG_PATH=pc_path)
flags = subprocess.run(["pkg-config", "--cflags", "--libs", "xentcc"], env=env, check=True,
                       stdout=subprocess.PIPE, text=True).stdout.split()
subprocess.run(["cc", src, "-I" + lib_dir, "-L" + lib_dir, "-l" + name, *flags, "-o", out],
               check=True)
