"""Full-page screenshots of an email in Chromium, and how many pixels two of them differ by.

Chromium writes the same PNG bytes for the same pixels, so equal bytes are equal pixels;
when the bytes differ, `differing_pixels` decodes both (8-bit RGB or RGBA PNGs, as
Chromium writes them) to say how many pixels and where, without an imaging library.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

WIDTHS = (375, 800)
SCHEMES = ("light", "dark")

# Figures an email may show, served to the page in place of the network: a wide and a
# tall one, so an image's size, corners and link all show in a screenshot.
_FIGURE = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}">'
    '<rect width="{w}" height="{h}" fill="#8fb3e6"/><circle cx="{cx}" cy="{cy}" r="{r}" fill="#0f2a4a"/>'
    '<rect x="10" y="10" width="{qw}" height="{qh}" fill="#e8a33d"/></svg>'
)


def figure(url: str) -> bytes:
    """An SVG picture for `url`: tall when the URL says so, wide otherwise."""
    w, h = (400, 700) if "tall" in url else (1072, 480)
    return _FIGURE.format(w=w, h=h, cx=w // 2, cy=h // 2, r=min(w, h) // 3, qw=w // 4, qh=h // 4).encode()


def screenshots(browser, html: str) -> Iterator[tuple[tuple[int, str], bytes]]:
    """((width, scheme), PNG) of the whole page at each width in each colour scheme;
    every request the page makes is answered with a figure, so nothing leaves the machine."""
    for width in WIDTHS:
        for scheme in SCHEMES:
            context = browser.new_context(viewport={"width": width, "height": 800}, color_scheme=scheme)
            context.route(
                "**/*", lambda route: route.fulfill(content_type="image/svg+xml", body=figure(route.request.url))
            )
            page = context.new_page()
            page.set_content(html, wait_until="load")
            yield (width, scheme), page.screenshot(full_page=True, animations="disabled")
            context.close()


def _decode(png: bytes) -> tuple[int, int, int, list[bytes]]:
    """(width, height, bytes per pixel, rows) of an 8-bit RGB or RGBA PNG."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, data = 8, []
    width = height = kind = 0
    while pos < len(png):
        length, chunk = struct.unpack(">I4s", png[pos : pos + 8])
        body = png[pos + 8 : pos + 8 + length]
        if chunk == b"IHDR":
            width, height, depth, kind = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and kind in (2, 6), f"PNG of depth {depth}, colour type {kind}"
        elif chunk == b"IDAT":
            data.append(body)
        pos += 12 + length
    bpp = 3 if kind == 2 else 4
    raw = zlib.decompress(b"".join(data))
    stride = width * bpp
    rows, previous = [], bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind_of_filter, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = previous[i]
            c = previous[i - bpp] if i >= bpp else 0
            if kind_of_filter == 1:
                line[i] = (line[i] + a) & 255
            elif kind_of_filter == 2:
                line[i] = (line[i] + b) & 255
            elif kind_of_filter == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind_of_filter == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        previous = line
    return width, height, bpp, rows


def differing_pixels(a: bytes, b: bytes) -> str:
    """'0 px' for the same picture, else how many pixels differ and the first of them."""
    if a == b:
        return "0 px"
    wa, ha, bpp, rows_a = _decode(a)
    wb, hb, _, rows_b = _decode(b)
    if (wa, ha) != (wb, hb):
        return f"the page is {wb}x{hb} px instead of {wa}x{ha}"
    count, first = 0, None
    for y, (ra, rb) in enumerate(zip(rows_a, rows_b, strict=True)):
        if ra != rb:
            for x in range(wa):
                if ra[x * bpp : (x + 1) * bpp] != rb[x * bpp : (x + 1) * bpp]:
                    count += 1
                    first = first or (x, y)
    return f"{count} px differ, the first at x={first[0]}, y={first[1]}" if first else "0 px"
