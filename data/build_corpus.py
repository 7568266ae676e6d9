#!/usr/bin/env python3
"""Rebuilds data/yuanqu.txt from the npm package chinese-poetry (MIT), file dist/yuanqu/yuanqu.json.

Usage: python3 data/build_corpus.py  (needs npm; fetches chinese-poetry@2.0.1 with `npm pack`)
One Yuan-dynasty song (元曲) per line: its paragraphs joined, in the package's order, stopping before the
text would pass 1 MB of UTF-8. Also copies the package's LICENSE to data/chinese-poetry-LICENSE.
"""
import json
import os
import subprocess
import sys
import tarfile
import tempfile

PACKAGE = "chinese-poetry@2.0.1"
MAX_BYTES = 1_000_000
HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        (tgz,) = [f for f in os.listdir(tmp) if f.endswith(".tgz")]
        with tarfile.open(os.path.join(tmp, tgz)) as tar:
            songs = json.load(tar.extractfile("package/dist/yuanqu/yuanqu.json"))
            license_text = tar.extractfile("package/LICENSE").read()
    lines, size = [], 0
    for song in songs:
        line = "".join(p.strip() for p in song["paragraphs"]).strip()
        if not line:
            continue
        n = len(line.encode("utf-8")) + 1
        if size + n > MAX_BYTES:
            break
        lines.append(line)
        size += n
    with open(os.path.join(HERE, "yuanqu.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(HERE, "chinese-poetry-LICENSE"), "wb") as f:
        f.write(license_text)
    print(f"wrote {len(lines)} songs, {size} bytes to data/yuanqu.txt", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
