"""Test tooling, not library code: copy notebooks for nbval with execution counts restored.

nbdev_clean (which `make test` enforces) blanks every execution count, and nbval skips comparing cells
whose reference was "not run". The copies number every code cell, so nbval checks each stored output and,
in strict mode, that cells with no stored output still print nothing.
"""
import shutil, sys
from pathlib import Path
import nbformat

def prepare(src: Path, dst: Path) -> None:
    "Copy the notebooks under `src` to `dst`, numbering every code cell."
    if dst.exists(): shutil.rmtree(dst)
    for f in sorted(src.rglob("*.ipynb")):
        if ".ipynb_checkpoints" in f.parts: continue
        nb = nbformat.read(f, as_version=4)
        n = 0
        for cell in nb.cells:
            if cell.cell_type != "code": continue
            n += 1
            cell.execution_count = n
            for o in cell.get("outputs", []):
                if "execution_count" in o: o["execution_count"] = n
        out = dst / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out)

if __name__ == "__main__":
    prepare(Path(sys.argv[1]), Path(sys.argv[2]))
