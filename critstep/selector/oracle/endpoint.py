"""Which server answers: the endpoint as recorded in labels and cache keys, and the model it serves.

An answer is only as good as the model behind it, so labels and cache keys name both the model and
the endpoint: an answer from a local server whose model is called `gpt-4o` is never served later as
GPT-4o's. The endpoint is recorded without credentials, query or trailing slash.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit, urlunsplit

from critstep.errors import ConfigError

log = logging.getLogger("critstep.oracle")

OPENAI_URL = "https://api.openai.com/v1"
# The model asked when nobody names one and the endpoint is OpenAI's (ATLaS's teacher).
DEFAULT_OPENAI_MODEL = "gpt-4o"


def endpoint_id(base_url: str | None) -> str:
    """`scheme://host[:port]/path` of the endpoint (OpenAI's when `base_url` is None)."""
    url = (base_url or OPENAI_URL).strip()
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"--base-url {url!r} has an invalid port") from None
    host = (parts.hostname or "").lower()
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise ConfigError(f"--base-url {url!r} is not an http(s) URL (e.g. http://127.0.0.1:8080/v1)")
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{port}" if port is not None else "")
    return urlunsplit((parts.scheme.lower(), netloc, parts.path.rstrip("/"), "", ""))


def is_openai(base_url: str | None) -> bool:
    """True for OpenAI's own API (which gets the strict-schema dialect and non-streamed requests)."""
    host = urlsplit(endpoint_id(base_url)).hostname or ""
    return host == "api.openai.com" or host.endswith(".openai.com")


def resolve_model(model: str | None, base_url: str | None, api_key: str, timeout: float) -> str:
    """The model to ask: `model` if given; gpt-4o at OpenAI; else the one the server lists.

    A server serving one model (llama.cpp's servers, `transformers serve <model>`, vLLM with one
    model) needs no `--model`; one serving several needs it, and the error lists them.
    """
    where = endpoint_id(base_url)
    if model is not None:
        if model.startswith(DEFAULT_OPENAI_MODEL) and not is_openai(base_url):
            log.warning(
                "--model %s with %s, which is not OpenAI's API: labels and prices will say %s; "
                "leave --model out to use the model the server serves", model, where, model
            )  # fmt: skip
        return model
    if is_openai(base_url):
        return DEFAULT_OPENAI_MODEL
    served = served_models(base_url, api_key, timeout)
    if len(served) == 1:
        log.info("%s serves %s: labeling with it", where, served[0])
        return served[0]
    if DEFAULT_OPENAI_MODEL in served:
        return DEFAULT_OPENAI_MODEL
    if not served:
        raise ConfigError(f"{where} lists no model (GET /models): name it with --model")
    listed = ", ".join(served[:10]) + (f" and {len(served) - 10} more" if len(served) > 10 else "")
    raise ConfigError(f"{where} serves {len(served)} models ({listed}): choose one with --model")


def served_models(base_url: str | None, api_key: str, timeout: float) -> list[str]:
    """The ids from the server's `GET /models`, or a one-line error saying why it could not be read."""
    import openai

    where = endpoint_id(base_url)
    client = openai.OpenAI(api_key=api_key, base_url=base_url, timeout=min(timeout, 30.0), max_retries=1)
    try:
        page = client.models.list()
        return [m.id for m in page.data]
    except openai.APIStatusError as e:
        if e.status_code == 503:  # llama-server while it loads the model
            raise ConfigError(f"{where} is not ready (GET /models: HTTP 503): wait until it has loaded its model, then run again") from None
        raise ConfigError(f"{where} did not list its models (GET /models: HTTP {e.status_code}): name the model with --model") from None
    except openai.APIConnectionError:
        raise ConfigError(f"cannot reach {where} (is the server running, and is --base-url right?)") from None
    except (openai.APIError, AttributeError, TypeError, ValueError):
        raise ConfigError(f"{where} answered GET /models with something that is not an OpenAI model list: is --base-url right (it usually ends in /v1)?") from None
    finally:
        client.close()
