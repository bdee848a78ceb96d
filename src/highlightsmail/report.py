"""`highlights report ISSUE`: how an issue did, from the send ledger and its delivery events.

Figures: recipients, sent, delivered, hard and soft bounces, complaints, unsubscribes
after the issue (by any way, until the next issue went out), unique opens and clicks,
clicks per link, and each of these as a rate of the delivered messages, checked against
the limits bulk senders are held to: complaints under 0.1 % and never 0.3 % (the large
mailbox providers reject bulk mail from senders above that), bounces under 2 %.

Delivered: SendGrid reports each delivery. Over SMTP nothing does, so there it is the
mail the relay accepted less what bounced since, and the report says it is an estimate.

Opens are counted from a tracking image that mail privacy proxies (Apple Mail's, for
one) fetch for every message they receive, read or not, so unique opens are an upper
bound and every form of the report says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from highlightsmail.errors import HighlightsError

if TYPE_CHECKING:
    from highlightsmail.store import Store
    from highlightsmail.workspace import Settings

COMPLAINTS_KEEP_UNDER = 0.001
COMPLAINTS_NEVER = 0.003
BOUNCES_KEEP_UNDER = 0.02
CHART_HOURS = 72  # the first three days, when nearly every event of an issue happens
OPENS_NOTE = "inflated by mail privacy proxies, which fetch every message's images: an upper bound"

#: The JSON form's top-level keys, in order (scripts rely on them).
JSON_KEYS = (
    "issue",
    "recipients",
    "sent",
    "delivered",
    "bounced",
    "soft_bounced",
    "complaints",
    "unsubscribes",
    "unique_opens",
    "unique_clicks",
    "links",
    "rates",
    "warnings",
)
RATE_KEYS = ("bounced", "soft_bounced", "complaints", "unsubscribes", "unique_opens", "unique_clicks")
# The chart's series: (label, event kinds, colour).
SERIES = (
    ("Delivered", ("delivered",), "#2563eb"),
    ("Opens", ("open",), "#16a34a"),
    ("Clicks", ("click",), "#d97706"),
    ("Bounces", ("bounce", "blocked", "dsn-permanent", "dsn-temporary"), "#dc2626"),
    ("Complaints", ("spamreport",), "#7c3aed"),
)


@dataclass(frozen=True)
class LinkClicks:
    url: str
    clicks: int
    unique_clicks: int


@dataclass(frozen=True)
class Report:
    """The figures of one issue."""

    issue: str
    backend: str
    started: str
    recipients: int
    sent: int
    delivered: int
    delivered_estimated: bool
    bounced: int
    soft_bounced: int
    complaints: int
    unsubscribes: int
    unique_opens: int
    unique_clicks: int
    links: list[LinkClicks]
    rates: dict[str, float | None]
    warnings: list[str]
    hourly: dict[str, list[int]] = field(default_factory=dict)  # series label -> events per hour

    def as_json(self) -> dict[str, Any]:
        """The JSON form: exactly JSON_KEYS."""
        data = {
            "issue": self.issue,
            "recipients": self.recipients,
            "sent": self.sent,
            "delivered": self.delivered,
            "bounced": self.bounced,
            "soft_bounced": self.soft_bounced,
            "complaints": self.complaints,
            "unsubscribes": self.unsubscribes,
            "unique_opens": self.unique_opens,
            "unique_clicks": self.unique_clicks,
            "links": [{"url": x.url, "clicks": x.clicks, "unique_clicks": x.unique_clicks} for x in self.links],
            "rates": dict(self.rates),
            "warnings": list(self.warnings),
        }
        assert tuple(data) == JSON_KEYS
        return data


def build_report(store: Store, issue: str) -> Report:
    """The report of an issue whose dispatch has begun."""
    info = store.dispatch_info(issue)
    if info is None:
        raise HighlightsError(f"{issue}: not sent yet, so there is nothing to report; send it with `highlights send`")
    counts = store.delivery_counts(issue)
    sent = counts.get("sent", 0)
    bounced = store.distinct_subscribers(issue, ("bounce", "dsn-permanent"))
    soft = store.soft_bounced(issue)
    complaints = store.distinct_subscribers(issue, ("spamreport",))
    estimated = info.backend != "sendgrid"
    if estimated:
        delivered = max(0, sent - bounced - soft)
    else:
        delivered = store.distinct_subscribers(issue, ("delivered",))
    figures = {
        "bounced": bounced,
        "soft_bounced": soft,
        "complaints": complaints,
        "unsubscribes": store.unsubscribes_after(issue),
        "unique_opens": store.distinct_subscribers(issue, ("open",)),
        "unique_clicks": store.distinct_subscribers(issue, ("click",)),
    }
    rates = {key: (round(figures[key] / delivered, 6) if delivered else None) for key in RATE_KEYS}
    return Report(
        issue=issue,
        backend=info.backend,
        started=info.started,
        recipients=info.total,
        sent=sent,
        delivered=delivered,
        delivered_estimated=estimated,
        links=[LinkClicks(url, n, people) for url, n, people in store.link_clicks(issue)],
        rates=rates,
        warnings=_warnings(rates),
        hourly=_hourly(store, issue, info.started),
        **figures,
    )


def _warnings(rates: dict[str, float | None]) -> list[str]:
    out = []
    complaints = rates["complaints"]
    if complaints is not None and complaints >= COMPLAINTS_NEVER:
        out.append(
            f"Complaints are {percent(complaints)} of delivered mail: at 0.3 % and above, the large mailbox "
            "providers reject bulk mail from the sender. Send nothing more until the cause is found."
        )
    elif complaints is not None and complaints >= COMPLAINTS_KEEP_UNDER:
        out.append(
            f"Complaints are {percent(complaints)} of delivered mail: keep them under 0.1 % "
            "(at 0.3 % the large mailbox providers reject bulk mail from the sender)."
        )
    bounced = rates["bounced"]
    if bounced is not None and bounced >= BOUNCES_KEEP_UNDER:
        out.append(
            f"Hard bounces are {percent(bounced)} of delivered mail: keep bounces under 2 %; "
            "addresses that bounced are no longer mailed, so check where the list came from."
        )
    return out


def _hourly(store: Store, issue: str, started: str) -> dict[str, list[int]]:
    per_kind: dict[str, list[int]] = {}
    for hour, kind, n in store.events_per_hour(issue, started, CHART_HOURS):
        per_kind.setdefault(kind, [0] * CHART_HOURS)[hour] += n
    return {
        label: [sum(per_kind.get(k, [0] * CHART_HOURS)[h] for k in kinds) for h in range(CHART_HOURS)]
        for label, kinds, _colour in SERIES
    }


def percent(rate: float | None) -> str:
    """0.0012 -> '0.12 %'; None (nothing delivered) -> '-'."""
    if rate is None:
        return "-"
    return f"{rate * 100:.2f} %"


# ---------------------------------------------------------------------------- the forms


def _rows(report: Report) -> list[tuple[str, int, str, str]]:
    """(label, figure, rate, note) for the table and the page."""
    r = report.rates
    taken_by = "the SMTP server" if report.backend == "smtp" else f"the {report.backend} backend"
    delivered_note = f"estimated: accepted by {taken_by} and not bounced since" if report.delivered_estimated else ""
    return [
        ("recipients", report.recipients, "", ""),
        ("sent", report.sent, "", ""),
        ("delivered", report.delivered, "", delivered_note),
        ("bounced (hard)", report.bounced, percent(r["bounced"]), "keep under 2 %"),
        ("soft bounces", report.soft_bounced, percent(r["soft_bounced"]), ""),
        ("complaints", report.complaints, percent(r["complaints"]), "keep under 0.1 %, never 0.3 %"),
        ("unsubscribes", report.unsubscribes, percent(r["unsubscribes"]), "after this issue, before the next"),
        ("unique opens", report.unique_opens, percent(r["unique_opens"]), OPENS_NOTE),
        ("unique clicks", report.unique_clicks, percent(r["unique_clicks"]), ""),
    ]


def format_table(report: Report) -> str:
    """The report as text for a terminal."""
    lines = [f"{report.issue}: sent through {report.backend}, dispatch started {report.started}", ""]
    for label, figure, rate, note in _rows(report):
        lines.append(f"  {label:<15}{figure:>9}  {rate:>9}" + (f"  ({note})" if note else "").rstrip())
    lines = [line.rstrip() for line in lines]
    if report.links:
        lines += ["", "  clicks per link:", f"  {'clicks':>9}  {'unique':>9}  url"]
        lines += [f"  {x.clicks:>9}  {x.unique_clicks:>9}  {x.url}" for x in report.links]
    if report.delivered == 0:
        lines += ["", "  Nothing reported delivered yet, so no rates."]
    if report.warnings:
        lines += ["", "Warnings:"] + [f"  ! {w}" for w in report.warnings]
    return "\n".join(lines) + "\n"


def render_html(report: Report, settings: Settings, *, generated: datetime | None = None) -> str:
    """One self-contained page: inline styles and an inline SVG chart drawn by the
    template; no script, nothing fetched from elsewhere."""
    from highlightsmail.templating import ui_environment

    env = ui_environment()  # the tool's own page, like the preview: not the newsletter's look
    return env.get_template("report.html.j2").render(
        report=report,
        newsletter=settings.name,
        rows=_rows(report),
        chart=_chart(report),
        percent=percent,
        generated=(generated or datetime.now().astimezone()).strftime("%Y-%m-%d %H:%M %Z").strip(),
    )


def _chart(report: Report) -> dict[str, Any]:
    """The chart's scale and series, for the template to draw: hours across, events up."""
    width, height = 720, 280
    left, right, top, bottom = 48, 12, 12, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max((max(values) for values in report.hourly.values()), default=0)
    top_value = _nice_ceiling(peak)

    def x(hour: float) -> float:
        return round(left + plot_w * hour / CHART_HOURS, 1)

    def y(value: float) -> float:
        return round(top + plot_h * (1 - value / top_value), 1)

    series = []
    for label, _kinds, colour in SERIES:
        values = report.hourly.get(label, [0] * CHART_HOURS)
        points = " ".join(f"{x(h + 0.5)},{y(v)}" for h, v in enumerate(values))  # each hour at its middle
        series.append({"label": label, "colour": colour, "points": points, "total": sum(values)})
    return {
        "width": width,
        "height": height,
        "left": left,
        "right": width - right,
        "top": top,
        "bottom": top + plot_h,
        "y_ticks": [{"y": y(v), "label": f"{v:g}"} for v in (0, top_value / 2, top_value)],
        "x_ticks": [{"x": x(h), "label": f"{h} h"} for h in range(0, CHART_HOURS + 1, 12)],
        "series": series,
        "empty": peak == 0,
        "hours": CHART_HOURS,
    }


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 5 x 10^n at or above `value` (at least 1)."""
    if value <= 1:
        return 1
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power


__all__ = ["JSON_KEYS", "RATE_KEYS", "LinkClicks", "Report", "build_report", "format_table", "percent", "render_html"]
