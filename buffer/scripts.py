"""The shard-side Lua scripts: each is buffer/lua/common.lua followed by the script's own file."""

from __future__ import annotations

from functools import cache
from pathlib import Path

_LUA_DIR = Path(__file__).parent / "lua"
SCRIPT_NAMES = ("create", "table", "insert", "sample", "mass", "trained", "quarantine", "stats", "size", "version")


@cache
def script_source(name: str) -> str:
    if name not in SCRIPT_NAMES:
        raise ValueError(f"unknown replay script {name!r}; valid: {list(SCRIPT_NAMES)}")
    return (_LUA_DIR / "common.lua").read_text() + "\n" + (_LUA_DIR / f"{name}.lua").read_text()
