"""Debian's Chromium, headless, through Playwright: the one way tests and benchmarks start
it (no browser is downloaded). HIGHLIGHTS_CHROMIUM names another binary."""

from __future__ import annotations

import os
from typing import Any

CHROMIUM = os.environ.get("HIGHLIGHTS_CHROMIUM", "/usr/bin/chromium")
# Chromium's own background traffic would only hit the closed network; keep it quiet.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def launch(playwright: Any) -> Any:
    """A headless Chromium browser from a started Playwright (`sync_playwright()`)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)


# Every visible element that holds text directly, with its font size, and the
# contrast of its colour against the first opaque background behind it.
TEXT_ELEMENTS_JS = """
() => {
  const rgba = (s) => { const m = s.match(/[\\d.]+/g).map(Number); return m.length === 3 ? [...m, 1] : m; };
  const lum = ([r, g, b]) => {
    const f = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = rgba(getComputedStyle(e).backgroundColor);
      if (c[3] > 0.5) return c;
    }
    return [255, 255, 255, 1];
  };
  const out = [];
  for (const el of document.body.querySelectorAll('*')) {
    const own = [...el.childNodes].filter(n => n.nodeType === 3).map(n => n.textContent).join('').trim();
    if (!own) continue;
    const rect = el.getBoundingClientRect();
    const style = getComputedStyle(el);
    if (rect.width === 0 || rect.height === 0 || style.visibility === 'hidden' || style.opacity === '0') continue;
    if (el.closest('[style*="display:none"]')) continue;
    const a = lum(rgba(style.color)), b = lum(background(el));
    out.push({tag: el.tagName.toLowerCase(), text: own.slice(0, 40), size: parseFloat(style.fontSize),
              contrast: (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)});
  }
  return out;
}
"""
