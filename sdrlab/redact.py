"""Secrets never shown: passwords in URLs (``scheme://user:password@host``), in free text such as
error messages, and in the parameters of a notebook run.

A leaf module (it imports nothing from sdrlab), so that the settings, the index, the store and the
runs can all mask what they show without depending on one another.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping
from urllib.parse import unquote

MASK = "***"


def mask_url(url: str) -> str:
    """``scheme://user:***@host/...``: never show a password (even one holding ``@`` or ``/``).
    Any scheme: ``ftp://``, ``s3://``, ``http(s)://`` (an S3 endpoint), ``postgresql+psycopg://``."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, hostpart = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:{MASK}@{hostpart}" if ":" in creds else url


_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][\w+.-]*://[^:/@\s]*:)\S+@")


def mask_urls_in(text: str) -> str:
    """Every ``scheme://user:password@`` in a free text (an error message) with the password masked."""
    return _URL_PASSWORD.sub(rf"\1{MASK}@", text)


def url_password(url: str) -> str | None:
    """The password of ``scheme://user:password@host`` (None without one)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return None
    creds = rest.rpartition("@")[0]
    return creds.split(":", 1)[1] if ":" in creds else None


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``scheme://user:password@host/path`` as (``scheme://host/path``, user, password), the
    credentials percent-decoded; a URL without them comes back as it is, with ``None`` twice."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url, None, None
    creds, _, hostpart = rest.rpartition("@")
    user, colon, password = creds.partition(":")
    return f"{scheme}://{hostpart}", unquote(user) or None, unquote(password) if colon else None


#: a literal secret shorter than this is not searched for in free text (it would mangle words);
#: in a URL it is masked all the same
MIN_SECRET_CHARS = 4


def secrets_in(values: Iterable[Any]) -> list[str]:
    """The URL passwords among ``values`` (strings), as written and percent-decoded, longest first:
    what :func:`scrub` must remove wherever it appears, in whatever rendering."""
    found: set[str] = set()
    for v in values:
        pw = url_password(v) if isinstance(v, str) else None
        if pw:
            found.update({pw, unquote(pw)})
    return sorted((s for s in found if len(s) >= MIN_SECRET_CHARS and s != MASK), key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with URL passwords masked and every literal secret replaced by ``***``."""
    text = mask_urls_in(text)
    for s in secrets:
        text = text.replace(s, MASK)
    return text


def scrub_tree(node: Any, secrets: Iterable[str] = ()) -> Any:
    """Every string in a JSON-like tree (a notebook: sources, outputs, metadata) through
    :func:`scrub`, in place where it can be; images (``image/*`` values) are left alone."""
    secrets = list(secrets)
    if isinstance(node, str):
        return scrub(node, secrets)
    if isinstance(node, list):
        node[:] = [scrub_tree(v, secrets) for v in node]
    elif isinstance(node, dict):
        for k in list(node):
            if not (isinstance(k, str) and k.startswith("image/")):
                node[k] = scrub_tree(node[k], secrets)
    return node


def public_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters as they may be shown or stored: JSON values, and any password in a URL
    (``db``, ``store``, an S3 endpoint) masked."""
    out: dict[str, Any] = {}
    for k, v in parameters.items():
        v = v if isinstance(v, (int, float, bool)) or v is None else str(v)
        out[k] = mask_url(v) if isinstance(v, str) else v
    return out

