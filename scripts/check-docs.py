#!/usr/bin/env python3
"""Checks the docs' links: every relative link in docs/src, README.md and CHANGELOG.md points at a
file that exists and, with a #fragment, at a heading of that file (mdBook's ids); every page is in
docs/src/SUMMARY.md and every SUMMARY entry exists. Prints each broken link; exits 1 if any."""
import os
import re
import sys

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
src = os.path.join(root, "docs", "src")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def slug(heading):
    # mdBook: lower case, keep letters, digits, '-' and '_', spaces become '-'
    text = re.sub(r"`|\*|_(?=\W)|\[|\]\([^)]*\)", "", heading).strip().lower()
    out = "".join(c if (c.isalnum() or c in "-_") else ("-" if c == " " else "") for c in text)
    return out


def headings(path):
    ids, fence = set(), False
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("```"):
                fence = not fence
            elif not fence and re.match(r"^#{1,6} ", line):
                base = slug(re.sub(r"^#+ ", "", line.strip()))
                n, s = 0, base
                while s in ids:
                    n += 1
                    s = f"{base}-{n}"
                ids.add(s)
    return ids


def links(path):
    fence = False
    with open(path, encoding="utf-8") as f:
        for no, line in enumerate(f, 1):
            if line.startswith("```"):
                fence = not fence
                continue
            if fence:
                continue
            for m in LINK.finditer(re.sub(r"`[^`]*`", "", line)):
                yield no, m.group(1)


files = [os.path.join(root, "README.md"), os.path.join(root, "CHANGELOG.md")]
for d, _, names in os.walk(src):
    files += [os.path.join(d, n) for n in names if n.endswith(".md")]
broken = []
for path in files:
    if not os.path.exists(path):
        broken.append(f"{os.path.relpath(path, root)}: missing")
        continue
    for no, target in links(path):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not checked here (no network at test time)
        file_part, _, fragment = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
        where = f"{os.path.relpath(path, root)}:{no}: {target}"
        if not os.path.exists(dest):
            broken.append(f"{where}: no such file")
        elif fragment and dest.endswith(".md") and fragment not in headings(dest):
            broken.append(f"{where}: no heading #{fragment}")

summary = os.path.join(src, "SUMMARY.md")
listed = {os.path.normpath(os.path.join(src, t.partition("#")[0])) for _, t in links(summary)}
for d, _, names in os.walk(src):
    for n in names:
        p = os.path.normpath(os.path.join(d, n))
        if n.endswith(".md") and n != "SUMMARY.md" and p not in listed:
            broken.append(f"{os.path.relpath(p, root)}: not in SUMMARY.md")
for b in broken:
    print(b)
print(f"docs links: {len(files)} files, {len(broken)} broken")
sys.exit(1 if broken else 0)
