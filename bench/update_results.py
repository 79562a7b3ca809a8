#!/usr/bin/env python3
"""Replace (or append) one '## <title>' section of docs/RESULTS.md with the contents of a file."""
import pathlib, re, sys

title, section_file = sys.argv[1], sys.argv[2]
path = pathlib.Path("docs/RESULTS.md")
text = path.read_text() if path.exists() else "# Results\n\n"
new = pathlib.Path(section_file).read_text().rstrip() + "\n\n"
pattern = re.compile(r"^## " + re.escape(title) + r"\n.*?(?=^## |\Z)", re.S | re.M)
text = pattern.sub(lambda m: new, text) if pattern.search(text) else text.rstrip() + "\n\n" + new
path.write_text(text)
