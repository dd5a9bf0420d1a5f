#!/usr/bin/env python3
"""interrupt.py LOG COMMAND...: runs COMMAND, sends it SIGTERM once LOG (a
NAME-train --log file, written in blocks) shows its first steps, and exits with 0 if the command then
exited with a failure status (mpirun reports a signalled job so) within 60 s
after saving, 1 if it finished before the signal or hung."""
import os
import signal
import subprocess
import sys
import time

log, cmd = sys.argv[1], sys.argv[2:]
p = subprocess.Popen(cmd)
deadline = time.time() + 120
while time.time() < deadline and p.poll() is None:
    try:
        with open(log) as f:
            if sum(1 for _ in f) > 1:
                break
    except FileNotFoundError:
        pass
    time.sleep(0.01)
if p.poll() is not None:
    sys.exit(f"interrupt.py: {cmd[0]} ended (status {p.returncode}) before the signal")
p.send_signal(signal.SIGTERM)
try:
    rc = p.wait(60)
except subprocess.TimeoutExpired:
    p.kill()
    sys.exit("interrupt.py: no exit 60 s after SIGTERM")
print(f"interrupt.py: exit status {rc}", file=sys.stderr)
sys.exit(0 if rc != 0 else 1)
