"""The one place where a server URL becomes what may be shown or stored, and where its credentials go.

A base URL such as ``http://user:pass@host:8000/v1?api-key=SECRET&api-version=2024-06-01`` can carry
credentials in two places: the user info (``user:pass@``) and the query. :func:`public_url` is the form
written to ``config.json``, ``metrics.json``, reports, fingerprints, logs and error messages: no user info,
no fragment, and no query parameter whose name looks like a credential (the others, such as
``api-version``, stay because they select what the server does). :func:`request_auth` splits the URL
requests are sent to from the ``Authorization`` header: the API key (``Bearer``) wins over the user info,
which is sent as HTTP Basic only when no key is set, and never both.
"""

from __future__ import annotations

import base64
import re
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

# query parameter names that hold credentials (api_key, api-key, apikey, key, token, access_token,
# secret, password, sig / signature of a signed URL, ...); matched against the lower-cased name
_SECRET_PARAM = re.compile(r"(^|[_\-.])(api[_\-.]?key|key|token|secret|pass(word)?|pwd|auth\w*|sig(nature)?|"
                           r"credentials?|session)$|^(x[_\-.])?api[_\-.]?key$|token|secret|passw")


def _host(parts) -> str:
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    return f"{host}:{parts.port}" if parts.port is not None else host


def is_secret_param(name: str) -> bool:
    """Whether a query parameter named ``name`` looks like it holds a credential."""
    return bool(_SECRET_PARAM.search(name.lower()))


def public_url(url: str) -> str:
    """``url`` without user info, fragment and credential-like query parameters (see the module docstring)."""
    try:
        parts = urlsplit(str(url))
        netloc = _host(parts)
    except ValueError:  # an unparsable URL (bad port, ...): show nothing that could hold a secret
        return "<unparsable URL>"
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not is_secret_param(k)])
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def request_auth(url: str, api_key: str | None) -> tuple[str, str | None]:
    """The URL to send requests to (user info removed) and the value of its ``Authorization`` header
    (None: send none). Keep the value in a :class:`refcal.backends.api_http.Secret`.

    ``api_key`` set: ``Bearer api_key`` and the user info is dropped (the key wins). No key but user
    info: ``Basic base64(user:password)`` (percent-escapes decoded). Neither: no header. Query
    parameters are kept in the request URL (a server may read its key there).
    """
    parts = urlsplit(url)
    bare = urlunsplit(parts._replace(netloc=_host(parts)))
    if api_key:
        return bare, f"Bearer {api_key}"
    if parts.username is not None or parts.password is not None:
        pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        return bare, "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
    return bare, None


__all__ = ["public_url", "request_auth", "is_secret_param"]
