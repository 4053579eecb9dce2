"""Run one serialized trigger as a triggerer process would, for the triggerer-restart test.

``python trigger_runner.py TRIGGER.json`` reads ``[classpath, kwargs]`` (what ``serialize()``
returned and the triggerer stores in its table), rebuilds the trigger from them alone, runs it
until its first event and prints the event payload as one JSON line. The test kills this process
with SIGKILL while the trigger waits, then starts a fresh one from the same row.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
from pathlib import Path
from typing import Any


def rebuild(classpath: str, kwargs: dict[str, Any]) -> Any:
    module_name, class_name = classpath.rsplit(".", 1)
    return getattr(importlib.import_module(module_name), class_name)(**kwargs)


async def first_event(trigger: Any) -> dict[str, Any]:
    async for event in trigger.run():
        return event.payload
    raise RuntimeError("the trigger ended without an event")


def main(row_path: str) -> None:
    classpath, kwargs = json.loads(Path(row_path).read_text())
    print("waiting", flush=True)
    print(json.dumps(asyncio.run(first_event(rebuild(classpath, kwargs)))), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
