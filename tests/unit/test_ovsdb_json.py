"""python-ovs's C JSON parser: used when the distribution ships one, and parses like the pure one.

PyPI's ``ovs`` has no C extension; the bootstrap links the one of Debian's python3-openvswitch
(OVS 3.1) into the venv's ``ovs`` (4.x).  These tests check that the link is in place where the
file exists, and that this parser reads OVSDB messages - valid and hostile - exactly as the
pure-Python one does, so the version difference changes nothing but speed.
"""

from __future__ import annotations

import importlib.machinery
import json
from pathlib import Path

import ovs.json
import pytest

from controller.southbound.ovsdb_host import json_parser_is_c

DISTRO_PARSER = Path("/usr/lib/python3/dist-packages/ovs") / (
    "_json" + importlib.machinery.EXTENSION_SUFFIXES[0]
)
SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")

needs_c = pytest.mark.skipif(not json_parser_is_c(), reason="python-ovs has no C parser here")


@pytest.mark.skipif(not DISTRO_PARSER.exists(), reason=f"no {DISTRO_PARSER}")
def test_the_distributions_c_parser_is_used() -> None:
    assert json_parser_is_c(), f"bootstrap did not link {DISTRO_PARSER} into {ovs.__path__}"


def _parse_with(parser: str, text: str) -> object:
    saved = ovs.json.PARSER
    ovs.json.PARSER = parser
    try:
        return ovs.json.from_string(text)
    finally:
        ovs.json.PARSER = saved


def _update(n: int) -> str:
    """A monitor_cond_since reply like ovsdb-server's: uuids, sets, maps, escapes, numbers."""
    rows = {
        f"{i:08x}-0000-4000-8000-{i:012x}": {
            "initial": {
                "name": f"tap{i}\u00e9\\\"\n",
                "ofport": i,
                "external_ids": ["map", [["iface-id", f"port-{i}"], ["x", "\u2603"]]],
                "interfaces": ["set", [["uuid", f"{i:08x}-1111-4000-8000-000000000000"]]],
                "stat": -(2**63) + i,
                "ratio": 0.5 + i,
            }
        }
        for i in range(n)
    }
    msg = {"id": 3, "error": None, "result": [False, "x", {"Interface": rows}]}
    return json.dumps(msg, ensure_ascii=False)


VALID = [
    pytest.param(SCHEMA.read_text() if SCHEMA.exists() else "{}", id="vswitch-schema"),
    pytest.param(_update(30), id="monitor-reply"),
    pytest.param('{"a": [1, 2.5e3, -0, true, false, null, "\\u00e9\\ud83d\\ude00"]}', id="scalars"),
    pytest.param('{"a": 99999999999999999999999}', id="integer-overflow"),  # both: 1e+23
]
HOSTILE = [
    pytest.param('{"id": 1, "result": [1, 2', id="truncated"),
    pytest.param('{"a": 1} {"b": 2}', id="trailing-value"),
    pytest.param('{"a": "\\ud800"}', id="lone-surrogate"),
    pytest.param('{"a": 1,}', id="trailing-comma"),
    pytest.param("[" * 2000 + "]" * 2000, id="too-deep"),
    pytest.param('{"a": "\x01"}', id="control-character"),
    pytest.param("{'a': 1}", id="single-quotes"),
]


@needs_c
@pytest.mark.parametrize("text", VALID)
def test_c_parser_reads_what_the_python_one_reads(text: str) -> None:
    c, py = _parse_with(ovs.json.PARSER_C, text), _parse_with(ovs.json.PARSER_PY, text)
    assert not isinstance(py, str), py  # from_string returns an error as a string
    assert c == py


@needs_c
@pytest.mark.parametrize("text", HOSTILE)
def test_c_parser_refuses_what_the_python_one_refuses(text: str) -> None:
    c, py = _parse_with(ovs.json.PARSER_C, text), _parse_with(ovs.json.PARSER_PY, text)
    assert isinstance(py, str) and isinstance(c, str), (c, py)
