"""The operator and API guides against the code: every `hyv` command in their code blocks parses
(subcommand and options exist), the uvicorn factory they name imports, every route they call
exists, and the sizing tables say their numbers are counted and their times assumed."""

from __future__ import annotations

import re
import shlex

from tests.deploy.common import ROOT, check_hyv_command, check_import

DOCS = ROOT / "docs"


def code_lines(name: str) -> list[str]:
    """Shell lines of the ```bash blocks, continuation lines joined."""
    text = (DOCS / name).read_text()
    lines: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
        pending = ""
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0].strip()
            if not pending and (not line or line.startswith("#")):
                continue
            pending = f"{pending}\n{line}" if pending else line
            try:
                shlex.split(pending)
            except ValueError:  # a quoted string goes on on the next line
                continue
            lines.append(pending)
            pending = ""
        assert not pending, f"{name}: unbalanced quotes in {pending!r}"
    return lines


def test_hyv_commands_in_the_docs_exist() -> None:
    checked = 0
    for name in ("operations.md", "api.md"):
        for line in code_lines(name):
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            command: list[str] = []
            for token in [*lexer, ";"]:
                if token in ("&&", "||", "|", ";", "&"):
                    if command and command[0] == "hyv":
                        check_hyv_command(command)
                        checked += 1
                    command = []
                else:
                    command.append(token)
    assert checked >= 2


def test_uvicorn_factory_in_the_docs_imports() -> None:
    text = (DOCS / "operations.md").read_text()
    targets = re.findall(r"uvicorn --factory ([\w.]+:\w+)", text)
    assert targets
    for target in targets:
        check_import(target)


def test_routes_called_in_the_api_guide_exist() -> None:
    from fastapi.routing import APIRoute

    from hyv.service.api import content, routes_derived, routes_system, routes_videos, sse

    routes = set()
    for module in (routes_videos, routes_derived, content, sse, routes_system):
        for route in module.router.routes:
            if isinstance(route, APIRoute):
                routes |= {(method, route.path) for method in route.methods or ()}
    patterns = {(m, re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", p) + "$")) for m, p in routes}
    called = 0
    for line in code_lines("api.md"):
        for match in re.finditer(r"\$H(/[\w/{}$-]*)", line):
            path = match.group(1).replace("$ID", "video_x")
            method = (
                "DELETE" if "-X DELETE" in line else ("POST" if " -d " in line or " -F " in line else "GET")
            )
            assert any(m == method and p.match(path) for m, p in patterns), f"{method} {path}"
            called += 1
    assert called >= 10
    table = (DOCS / "api.md").read_text().split("## Routes", 1)[1].split("##", 1)[0]
    for method, path in re.findall(r"`(GET|POST|DELETE) (/[^` ]*)`", table):
        if path != "/":
            assert any(m == method and p.match(path.replace("{id}", "x")) for m, p in patterns), (
                method,
                path,
            )


def test_sizing_numbers_say_how_they_were_made() -> None:
    """The FLOPs and memory are counted on the meta device (not measured on a GPU), and the only
    times in the tables come from an assumed throughput: both said where the numbers are."""
    text = (DOCS / "operations.md").read_text()
    sizing = text.split("## Sizing", 1)[1].split("\n## ", 1)[0]
    assert "**counted, not measured on a GPU**" in sizing
    header = next(line for line in sizing.splitlines() if line.startswith("| video (H x W x frames)"))
    timed = [c for c in header.split("|") if c.strip().startswith(("s / step", "50 steps"))]
    assert timed and all("ASSUMED" in c for c in timed), header
