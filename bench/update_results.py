#!/usr/bin/env python3
"""Replace (or append) one section of docs/RESULTS.md with the contents of a file.

  update_results.py TITLE FILE                 the '## TITLE' section
  update_results.py TITLE FILE --under PARENT  the '### TITLE' subsection inside '## PARENT' (hand-written text
                                               elsewhere in the parent section is kept)
"""
import pathlib, re, sys

args = sys.argv[1:]
parent = None
if "--under" in args:
    i = args.index("--under")
    parent = args[i + 1]
    del args[i:i + 2]
title, section_file = args
path = pathlib.Path("docs/RESULTS.md")
text = path.read_text() if path.exists() else "# Results\n\n"
new = pathlib.Path(section_file).read_text().rstrip() + "\n\n"
if parent is None:
    pattern = re.compile(r"^## " + re.escape(title) + r"\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda m: new, text) if pattern.search(text) else text.rstrip() + "\n\n" + new
else:
    ppat = re.compile(r"^## " + re.escape(parent) + r"\n.*?(?=^## |\Z)", re.S | re.M)
    pm = ppat.search(text)
    if not pm:
        sys.exit(f"update_results.py: no section '## {parent}' in {path}")
    body = pm.group(0)
    spat = re.compile(r"^### " + re.escape(title) + r"\n.*?(?=^### |^## |\Z)", re.S | re.M)
    body = spat.sub(lambda m: new, body) if spat.search(body) else body.rstrip() + "\n\n" + new
    text = text[:pm.start()] + body + text[pm.end():]
path.write_text(text)
