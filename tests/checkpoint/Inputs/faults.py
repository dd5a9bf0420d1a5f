#!/usr/bin/env python3
"""Faults injected into every file operation of a training run's checkpoint
writes, through the runtime's test hook (runtime/checkpoint.c):

  faults.py kill|enospc NAME-train DATA WORKDIR [--steps N]

kill: for N = 1, 2, ... the run is killed (SIGKILL) just before its N-th
file operation, then `--resume` runs to the end of two epochs. The resumed
run must end with files byte-identical to an uninterrupted run's, or refuse
with a clear error because there is no checkpoint yet; never anything else.
No temporary file may be left. With --steps N (kill only) the faulted run
stops after N steps, so its last save is mid-epoch.

enospc: the N-th operation fails as on a full disk. The run must stop with
status 1 and a message naming the file and the error, leave the checkpoint
before it intact (or, past the commit point, the new one, completed by the
next run), and no temporaries; --resume then ends byte-identical.

Prints one summary line per mode for FileCheck; exits 1 on the first
violation, saying what happened.
"""
import os
import shutil
import subprocess
import sys


def run(exe, cwd, args, env=None):
    e = dict(os.environ)
    e.pop("XENTCC_FAULT_KILL_AT", None)
    e.pop("XENTCC_FAULT_ENOSPC_AT", None)
    e.update(env or {})
    p = subprocess.run([exe] + args, cwd=cwd, env=e, capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout, p.stderr


def files(d):
    """The checkpoint files (bytes) and the names of any temporaries."""
    out, tmps = {}, []
    for name in sorted(os.listdir(d)):
        if ".tmp" in name:
            tmps.append(name)
        elif name.endswith(".safetensors"):
            with open(os.path.join(d, name), "rb") as f:
                out[name] = f.read()
    return out, tmps


def fail(msg, *outputs):
    print("FAIL: " + msg)
    for o in outputs:
        print(o)
    sys.exit(1)


def main():
    mode, exe, data, work = sys.argv[1:5]
    faulted = ["--epochs", "2"] + sys.argv[5:7]
    assert mode in ("kill", "enospc") and (mode == "kill" or len(faulted) == 2)
    exe, data = os.path.abspath(exe), os.path.abspath(data)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    base = ["--data", data, "--no-eval", "--quiet", "--save", "w.safetensors"]

    def fresh(name):
        d = os.path.join(work, name)
        os.makedirs(d)
        return d

    # The uninterrupted run, and the checkpoint after its first epoch.
    ref_dir, ref1_dir = fresh("ref"), fresh("ref1")
    rc, out, err = run(exe, ref_dir, base + ["--epochs", "2"])
    if rc:
        fail("the reference run failed", out, err)
    rc, out, err = run(exe, ref1_dir, base + ["--epochs", "1"])
    if rc:
        fail("the one-epoch run failed", out, err)
    ref, _ = files(ref_dir)
    ref1, _ = files(ref1_dir)
    if len(ref) != 2:
        fail("expected two checkpoint files, got %s" % sorted(ref))

    def resume(d, n):
        rc, out, err = run(exe, d, base + ["--epochs", "2", "--resume"])
        got, tmps = files(d)
        if tmps:
            fail("operation %d: temporaries left after --resume: %s" % (n, tmps), err)
        if rc == 0:
            if got != ref:
                fail("operation %d: --resume ended with other files than the uninterrupted "
                     "run: a mixed checkpoint" % n, out, err)
            return "resumed"
        if rc == 1 and "error: --resume: no checkpoint" in err and "hint:" in err and not got:
            return "refused"
        if rc == 1 and "already holds 2 epochs" in err and got == ref:
            return "resumed"  # killed after the last checkpoint was committed: nothing to do
        fail("operation %d: --resume exited %d" % (n, rc), out, err)

    n, outcomes = 0, {"resumed": 0, "refused": 0, "completed": 0}
    while True:
        n += 1
        if n > 200:
            fail("more than 200 file operations for two checkpoints")
        d = fresh("%s%d" % (mode, n))
        if mode == "kill":
            rc, out, err = run(exe, d, base + faulted, {"XENTCC_FAULT_KILL_AT": str(n)})
            if rc == 0:  # past the last operation
                break
            if rc != -9:
                fail("operation %d: expected SIGKILL, got status %d" % (n, rc), out, err)
            outcomes[resume(d, n)] += 1
            continue
        rc, out, err = run(exe, d, base + faulted, {"XENTCC_FAULT_ENOSPC_AT": str(n)})
        if "test hook: ENOSPC" not in err:  # past the last operation
            if rc:
                fail("operation %d: the run failed without a fault" % n, out, err)
            break
        got, tmps = files(d)
        if rc == 0:  # a fault the run may survive: the directory's fsync
            if got != ref or tmps:
                fail("operation %d: the run succeeded but its files differ" % n, err)
            outcomes["completed"] += 1
            continue
        if rc != 1 or "No space left on device" not in err or "hint:" not in err:
            fail("operation %d: expected status 1 and a message, got %d" % (n, rc), out, err)
        if "w.safetensors" not in err and "w.optim.safetensors" not in err:
            fail("operation %d: the message names no file" % n, err)
        committed = got.get("w.optim.safetensors")
        if got == ref1 or not got:  # the previous checkpoint, intact (none before the first)
            if tmps:
                fail("operation %d: temporaries left: %s" % (n, tmps), err)
        elif committed in (ref1["w.optim.safetensors"], ref["w.optim.safetensors"]):
            # Past the commit point: the weights wait in their temporary.
            if "--resume" not in err or len(tmps) != 1:
                fail("operation %d: committed, but %s" % (n, tmps), err)
        else:
            fail("operation %d: the files after the failure are neither checkpoint" % n, err)
        outcomes[resume(d, n)] += 1
    print("%s: %d file operations; %d resumed bit-identically, %d refused (no checkpoint yet), "
          "%d completed" % (mode, n - 1, outcomes["resumed"], outcomes["refused"],
                            outcomes["completed"]))


if __name__ == "__main__":
    main()
