#!/usr/bin/env python3
"""Extract plain English text from installed Debian SWORD modules (zText / zCom) into one .txt file.

SWORD's compressed modules store, per testament, three files:
  ?zs  block index: per block (offset u32, compressed size u32, uncompressed size u32)
  ?zz  the blocks, each plain zlib
  ?zv  entry index: per verse (block u32, offset u32, size u16) -- size u32 for zCom4/zText4
('?' is b for book-sized blocks, c for chapter-sized ones.)  Entries are OSIS markup; we drop notes
and tags and keep the words.  Usage:

    apt-get install -y sword-text-web sword-comm-tdavid sword-comm-mhcc
    python scripts/extract_sword_text.py --out data/sword.txt            # every installed module
    python scripts/extract_sword_text.py --modules engWEB2015eb --out web.txt
"""

from __future__ import annotations

import argparse
import glob
import html
import os
import re
import struct
import sys
import tempfile
import zlib

SWORD_ROOT = "/usr/share/sword"

_NOTE = re.compile(r"<note\b[^>]*?(?<!/)>.*?</note>", re.S)
_BREAK = re.compile(r"<(?:lb|p|/p|l|/l|/title|/row|/item)\b[^>]*>|<div\b[^>]*eID=[^>]*>|<div\b[^>]*sID=[^>]*>")
_TAG = re.compile(r"<[^>]*(?:>|$)")  # a tag cut off at the end of an entry counts too
_SPACES = re.compile(r"[ \t\r\f\v]+")
_NEWLINES = re.compile(r"\s*\n\s*")


def read_conf(path: str) -> dict[str, str]:
    """The key=value pairs of a mods.d/*.conf file (first value wins), plus its [name]."""
    conf: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.strip()
            if line.startswith("[") and line.endswith("]") and "name" not in conf:
                conf["name"] = line[1:-1]
            elif "=" in line and not line.startswith("#"):
                key, _, value = line.partition("=")
                conf.setdefault(key.strip(), value.strip())
    return conf


def osis_to_text(markup: str) -> str:
    """Plain text of one OSIS entry: footnotes dropped, tags removed, entities decoded."""
    text = _NOTE.sub(" ", markup)
    text = _BREAK.sub("\n", text)
    text = html.unescape(_TAG.sub("", text))
    text = _SPACES.sub(" ", text)
    return _NEWLINES.sub("\n", text).strip()


def module_entries(data_dir: str, driver: str):
    """Yield the decoded text of every entry of a zText/zCom module, testament by testament."""
    for testament in ("ot", "nt"):
        for index_path in sorted(glob.glob(os.path.join(data_dir, f"{testament}.?zs"))):
            kind = index_path[-3]
            with open(index_path, "rb") as fh:
                blocks_index = fh.read()
            with open(os.path.join(data_dir, f"{testament}.{kind}zz"), "rb") as fh:
                blob = fh.read()
            with open(os.path.join(data_dir, f"{testament}.{kind}zv"), "rb") as fh:
                entry_index = fh.read()
            if not blocks_index:
                continue
            # The 4-byte entry sizes of the "4" drivers; trust the file length when the conf disagrees.
            wide = driver.endswith("4") and len(entry_index) % 12 == 0
            fmt, width = ("<III", 12) if wide or len(entry_index) % 10 else ("<IIH", 10)
            cache: dict[int, bytes] = {}
            seen: set[tuple[int, int]] = set()  # commentaries link verse ranges to one shared entry
            for pos in range(0, len(entry_index) - width + 1, width):
                block, offset, size = struct.unpack_from(fmt, entry_index, pos)
                if size == 0 or block * 12 + 12 > len(blocks_index) or (block, offset) in seen:
                    continue
                seen.add((block, offset))
                if block not in cache:
                    cache.clear()  # entries come in block order: one block in memory at a time
                    start, csize, _usize = struct.unpack_from("<III", blocks_index, block * 12)
                    cache[block] = zlib.decompress(blob[start : start + csize])
                raw = cache[block][offset : offset + size]
                text = osis_to_text(raw.decode("utf-8", errors="replace"))
                if text:
                    yield text


def installed_modules(root: str) -> list[dict[str, str]]:
    """Confs of installed zText/zCom modules with UTF-8 or Latin-1 text."""
    mods = []
    for conf_path in sorted(glob.glob(os.path.join(root, "mods.d", "*.conf"))):
        conf = read_conf(conf_path)
        if conf.get("ModDrv", "").lower().startswith(("ztext", "zcom")):
            mods.append(conf)
    return mods


def main(argv: list[str] | None = None) -> int:
    """Write the plain text of the chosen SWORD modules to --out (atomically)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output .txt file")
    ap.add_argument("--root", default=SWORD_ROOT, help=f"SWORD library root (default {SWORD_ROOT})")
    ap.add_argument("--modules", default=None, help="comma-separated module names (default: all installed)")
    args = ap.parse_args(argv)

    mods = installed_modules(args.root)
    if args.modules:
        wanted = {m.strip().lower() for m in args.modules.split(",")}
        mods = [m for m in mods if m.get("name", "").lower() in wanted]
        missing = wanted - {m.get("name", "").lower() for m in mods}
        if missing:
            print(f"error: modules={','.join(sorted(missing))!r}: not installed under {args.root}", file=sys.stderr)
            return 2
    if not mods:
        print(f"error: root={args.root!r}: no zText/zCom SWORD modules installed (apt-get install sword-text-web)",
              file=sys.stderr)  # fmt: skip
        return 2

    folder = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    total = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            for conf in mods:
                data_dir = os.path.normpath(os.path.join(args.root, conf.get("DataPath", "")))
                chars = 0
                for text in module_entries(data_dir, conf.get("ModDrv", "")):
                    out.write(text + "\n")
                    chars += len(text) + 1
                print(f"{conf['name']}: {chars:,} characters", file=sys.stderr)
                total += chars
        os.chmod(tmp, 0o644)
        os.replace(tmp, args.out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    print(f"wrote {total:,} characters to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
