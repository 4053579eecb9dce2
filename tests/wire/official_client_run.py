"""Send every corpus input with the official client, ``modelbit.get_inference`` 0.44.3.

Runs in the official client's own environment (``scripts/official_client_env.sh``), never the
provider's, so it imports nothing from the provider. Input ``i`` of the corpus is sent with
``timeout_seconds=i + 1``, which the request body carries: that is how the test tells the recorded
requests of one input from the next. Chunks of ``BATCH_SIZE`` rows, one request at a time, so the
recorded order is the chunk order.

Usage: ``python official_client_run.py CORPUS_FILE BASE_URL OUTPUT_JSON``; writes
``{name: "ok" | "error: ..."}``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from typing import Any

WORKSPACE = "wire"
REGION = "us-east-2.aws"
OFFICIAL_BASE_URL = f"https://{WORKSPACE}.{REGION}.modelbit.com"


def load_corpus(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("wire_corpus", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def redirect_to_local_server(local_base_url: str) -> None:
    """Swap modelbit.com for the local server in the client's own session; nothing else changes."""
    from modelbit.api import inference_api

    session = inference_api._session
    original_post: Callable[..., Any] = session.post

    def post_to_local_server(url: str, **kwargs: Any) -> Any:
        return original_post(url.replace(OFFICIAL_BASE_URL, local_base_url.rstrip("/"), 1), **kwargs)

    session.post = post_to_local_server  # type: ignore[method-assign]


def main() -> None:
    corpus_path, base_url, output_path = sys.argv[1:4]
    corpus = load_corpus(corpus_path)
    redirect_to_local_server(base_url)
    import modelbit

    outcomes: dict[str, str] = {}
    for position, (name, make) in enumerate(corpus.all_inputs()):
        try:
            modelbit.get_inference(
                deployment="echo",
                data=make(),
                region=REGION,
                workspace=WORKSPACE,
                branch="main",
                timeout_seconds=position + 1,
                batch_size=corpus.BATCH_SIZE,
                batch_concurrency=1,
            )
            outcomes[name] = "ok"
        except Exception as error:  # reported per input; the test names each one that failed
            outcomes[name] = f"error: {type(error).__name__}: {error}"
    with open(output_path, "w", encoding="utf-8") as output:
        json.dump(outcomes, output)


if __name__ == "__main__":
    main()
