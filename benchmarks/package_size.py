"""Size of the package: code lines (no docstrings, comments or blank lines) and all lines.

Run: python benchmarks/package_size.py [REV ...]   (git revisions; default: the working tree)

Prints one row per revision and, with --files, per file. Docstrings are left out of the
code count because they carry the math and the examples, which a smaller package should
keep.
"""

import argparse
import ast
import io
import pathlib
import subprocess
import tarfile
import tokenize

SKIP = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}


def code_lines(source):
    """Lines holding code: not blank, not only a comment, not inside a docstring."""
    docstring = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                docstring.update(range(first.lineno, first.end_lineno + 1))
    lines = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in SKIP:
            lines.update(n for n in range(tok.start[0], tok.end[0] + 1) if n not in docstring)
    return len(lines)


def sources(rev):
    """`{path: text}` of the package's .py files at `rev` (None: the working tree)."""
    root = pathlib.Path(__file__).resolve().parents[1]
    if rev is None:
        return {str(p.relative_to(root)): p.read_text() for p in sorted((root / "keras_implicit").rglob("*.py"))}
    data = subprocess.run(["git", "-C", str(root), "archive", rev, "keras_implicit"], capture_output=True,
                          check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read().decode() for m in tar.getmembers() if m.name.endswith(".py")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revs", nargs="*", help="git revisions (default: the working tree)")
    parser.add_argument("--files", action="store_true", help="one row per file too")
    args = parser.parse_args()
    print(f"{'revision':<14} {'code lines':>10} {'all lines':>10} {'files':>6}")
    for rev in args.revs or [None]:
        files = sources(rev)
        code = {path: code_lines(text) for path, text in files.items()}
        total = sum(text.count("\n") for text in files.values())
        print(f"{rev or 'working tree':<14} {sum(code.values()):>10} {total:>10} {len(files):>6}")
        if args.files:
            for path in sorted(code):
                print(f"  {code[path]:>6}  {path}")


if __name__ == "__main__":
    main()
