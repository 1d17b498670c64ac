"""A guard for the report's promise: opening it makes no network request.

`external_references(html)` lists everything in a page that would make a browser fetch
something: a src/href/srcset/poster/action that isn't a data: URI or an #anchor, a CSS url()
that isn't a #fragment, an @import, and elements that load or navigate by themselves (link,
iframe, object, embed, base, meta refresh). Text is not inspected: an environment value that
mentions an address is printed, never followed. render_run refuses to write a report that
fails this check, so a template change cannot silently add a request.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

_URL_ATTRS = {"src", "href", "xlink:href", "srcset", "poster", "action", "formaction", "background", "data", "ping", "cite", "manifest"}
_LOADING_TAGS = {"link", "iframe", "frame", "object", "embed", "base", "portal", "audio", "video", "source", "track"}
_CSS_URL = re.compile(r"url\(\s*['\"]?\s*(?!#)([^'\")\s]*)", re.IGNORECASE)
_CSS_IMPORT = re.compile(r"@import", re.IGNORECASE)


def _local(value: str) -> bool:
    v = value.strip().lower()
    return v.startswith("data:") or v.startswith("#") or v == ""


class _Scanner(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _LOADING_TAGS:
            self.found.append(f"<{tag}> element")
        for name, value in attrs:
            value = value or ""
            if name in _URL_ATTRS and not _local(value):
                self.found.append(f"<{tag} {name}={value!r}>")
            if name == "style" or "url(" in value.lower():  # SVG fill="url(...)" fetches too
                self._css(value, f"<{tag} {name}>")
            if tag == "meta" and name == "http-equiv" and value.lower() == "refresh":
                self.found.append("<meta http-equiv=refresh>")
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self._css(data, "<style>")

    def _css(self, css: str, where: str) -> None:
        for match in _CSS_URL.finditer(css):
            self.found.append(f"{where} url({match.group(1)})")
        if _CSS_IMPORT.search(css):
            self.found.append(f"{where} @import")


def external_references(html: str) -> list[str]:
    scanner = _Scanner()
    scanner.feed(html)
    scanner.close()
    return scanner.found
