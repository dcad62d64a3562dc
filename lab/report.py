"""Console output shared by the demo and the Mininet topologies (stdlib only: Mininet runs it
under Debian's /usr/bin/python3, outside the venv)."""

from __future__ import annotations


def step(msg: str) -> None:
    """One progress line per step, flushed so it shows before a slow step runs."""
    print(f"==> {msg}", flush=True)


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A plain left-aligned text table with a dashed rule under the header."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*headers).rstrip(), line.format(*("-" * w for w in widths))]
    out += [line.format(*map(str, r)).rstrip() for r in rows]
    return "\n".join(out)
