"""Write every YAML block of a Markdown file (docs/operations.md, helm/README.md)
marked `<!-- helm-example: NAME -->` to OUT/NAME.yaml (one file per example) and
print the names; a NAME already in OUT (from another file) is an error.
   python3 scripts/helm-examples.py docs/operations.md OUT"""
import pathlib
import re
import sys

text = pathlib.Path(sys.argv[1]).read_text()
out = pathlib.Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
examples = re.findall(r"<!-- helm-example: ([\w-]+) -->\n```yaml\n(.*?)```", text, re.S)
if not examples:
    sys.exit(f"no helm-example blocks in {sys.argv[1]}")
for name, body in examples:
    if (out / f"{name}.yaml").exists():
        sys.exit(f"helm-example {name} is named twice")
    (out / f"{name}.yaml").write_text(body)
    print(name)
