"""The official openai SDK against agentd's HTTP socket, run as a real process (under
another uid with setpriv, for the role tests). Prints one JSON line:

    python -m tests.http_client HTTP_SOCKET MESSAGE
        {"answer": ...} or {"status": 403, "code": "FORBIDDEN", "retry_after": ...}
"""

from __future__ import annotations

import json
import sys

import httpx2
import openai


def sdk(path: str) -> openai.OpenAI:
    """The SDK over a Unix socket; no retries, so a 429 reaches the test as it is."""
    http = httpx2.Client(transport=httpx2.HTTPTransport(uds=path), timeout=30)
    return openai.OpenAI(base_url="http://agentd/v1", api_key="x", http_client=http, max_retries=0)


def main(path: str, message: str) -> None:
    try:
        completion = sdk(path).chat.completions.create(
            model="agentd", messages=[{"role": "user", "content": message}]
        )
    except openai.APIStatusError as exc:
        error = exc.body if isinstance(exc.body, dict) else {}  # the SDK unwraps "error"
        print(json.dumps({"status": exc.status_code, "code": error.get("code")}))
        return
    print(json.dumps({"answer": completion.choices[0].message.content}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
