#!/usr/bin/env python3
"""Syntax check for the project's PowerShell scripts without PowerShell.

PowerShell itself (pwsh) is not available from the registries this project
installs from (Debian, PyPI, npm: the npm `pwsh` package downloads the real
binary from elsewhere at install time), so this parses each .ps1 file with
the tree-sitter PowerShell grammar (PyPI: tree-sitter, tree-sitter-powershell)
and fails on any syntax error, printing where. It is a grammar check, not
PowerShell's own parser: it catches unbalanced braces, broken strings and
malformed statements, not a wrong cmdlet or parameter name.

usage: check-powershell.py [FILE.ps1 ...]   (default: scripts/windows/*.ps1)
exit:  0 all parse, 1 a syntax error, 77 tree-sitter not installed (skip)
"""
import pathlib
import sys

try:
    import tree_sitter
    import tree_sitter_powershell
except ImportError as e:
    print(f"SKIP: {e.name} is not installed (pip install tree-sitter tree-sitter-powershell)")
    sys.exit(77)


def errors(node, out):
    """Collects ERROR and MISSING nodes, the parser's syntax errors."""
    if node.type == "ERROR" or node.is_missing:
        out.append(node)
        return out
    for child in node.children:
        if child.has_error:
            errors(child, out)
    return out


def main(argv):
    root = pathlib.Path(__file__).resolve().parent.parent
    files = [pathlib.Path(a) for a in argv] or sorted((root / "scripts" / "windows").glob("*.ps1"))
    if not files:
        print("no .ps1 files found", file=sys.stderr)
        return 1
    parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))
    failed = False
    for path in files:
        source = path.read_bytes()
        tree = parser.parse(source)
        found = errors(tree.root_node, []) if tree.root_node.has_error else []
        if not found:
            print(f"ok    {path}")
            continue
        failed = True
        for node in found:
            line, col = node.start_point
            what = f"missing {node.type}" if node.is_missing else "syntax error"
            text = source.splitlines()[line].decode(errors="replace").strip() if line < len(source.splitlines()) else ""
            print(f"FAIL  {path}:{line + 1}:{col + 1}: {what}: {text}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
