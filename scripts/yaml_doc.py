#!/usr/bin/python3
"""docs/yaml.md held against the compiler.

  scripts/yaml_doc.py [--xentcc PATH] DOC.md

Checks that:
  - every key `xentcc --list-options` prints (the frontend's own schema table)
    has a row in DOC, a table line starting with | `KEY` |, and every such
    row names a key the frontend accepts;
  - every ```yaml block after an <!-- example --> line compiles
    (`xentcc FILE --emit=ir`);
  - a block marked <!-- example: PATH --> is PATH (relative to the
    repository) without its leading comment lines.

Exit status 0 when all hold, 1 when not, 2 on a usage or setup error.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROW = re.compile(r"^\| `([^`]+)` \|")
MARK = re.compile(r"^<!-- example(?:: (\S+))? -->$")


def documented_keys(lines):
    return {m.group(1) for m in map(ROW.match, lines) if m}


def examples(lines, doc):
    """(line number, source file or None, text) of each marked block."""
    out = []
    i = 0
    while i < len(lines):
        m = MARK.match(lines[i])
        if not m:
            i += 1
            continue
        if i + 1 >= len(lines) or lines[i + 1] != "```yaml":
            sys.exit(f"{doc}:{i + 1}: an example mark must be followed by a ```yaml block")
        end = i + 2
        while end < len(lines) and lines[end] != "```":
            end += 1
        if end == len(lines):
            sys.exit(f"{doc}:{i + 2}: the yaml block is not closed")
        out.append((i + 3, m.group(1), "\n".join(lines[i + 2:end]) + "\n"))
        i = end + 1
    return out


def without_leading_comments(text):
    lines = text.splitlines(keepends=True)
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return "".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--xentcc", default="xentcc")
    ap.add_argument("doc")
    args = ap.parse_args()
    try:
        with open(args.doc, encoding="utf-8") as f:
            lines = f.read().splitlines()
        accepted = set(subprocess.run([args.xentcc, "--list-options"], check=True,
                                      capture_output=True, text=True).stdout.split())
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"yaml_doc: {e}", file=sys.stderr)
        return 2
    problems = []
    keys = documented_keys(lines)
    for k in sorted(accepted - keys):
        problems.append(f"undocumented: {k} (the frontend accepts it; add a row | `{k}` | to {args.doc})")
    for k in sorted(keys - accepted):
        problems.append(f"documented but not accepted: {k}")

    blocks = examples(lines, args.doc)
    with tempfile.TemporaryDirectory() as tmp:
        for n, source, text in blocks:
            if source:
                try:
                    with open(os.path.join(ROOT, source), encoding="utf-8") as f:
                        want = without_leading_comments(f.read())
                except OSError as e:
                    problems.append(f"{args.doc}:{n}: {e}")
                    continue
                if want != text:
                    problems.append(f"{args.doc}:{n}: the example differs from {source} "
                                    "(past its leading comments)")
            # Relative data paths resolve against the file, as in examples/.
            path = os.path.join(tmp, "examples", f"line{n}.yaml")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            r = subprocess.run([args.xentcc, path, "--emit=ir"], capture_output=True, text=True)
            if r.returncode != 0:
                problems.append(f"{args.doc}:{n}: the example does not compile:\n{r.stderr}")

    for p in problems:
        print(p)
    print(f"{len(accepted)} keys accepted by the frontend, {len(keys & accepted)} of them "
          f"documented in {os.path.basename(args.doc)}; {len(blocks)} examples checked"
          + ("" if problems else "; ok"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
