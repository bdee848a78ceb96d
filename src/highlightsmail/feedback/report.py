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
from datetime import UTC, datetime
from typing import Any

from highlightsmail.authoring.workspace import Settings
from highlightsmail.errors import HighlightsError
from highlightsmail.store import Store
from highlightsmail.templating import ui_environment

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
    "audience",
)
RATE_KEYS = ("bounced", "soft_bounced", "complaints", "unsubscribes", "unique_opens", "unique_clicks")


@dataclass(frozen=True)
class Series:
    """A line of the chart: what it counts and how it looks. Each has its own dash
    and marker as well as its colour, so the lines are told apart without colour."""

    label: str
    kinds: tuple[str, ...]
    colour: str
    dash: str  # stroke-dasharray; "" for a solid line
    marker: str  # a shape of MARKERS


SERIES = (
    Series("Delivered", ("delivered",), "#1d4ed8", "", "circle"),
    Series("Opens", ("open",), "#15803d", "10 4", "square"),
    Series("Clicks", ("click",), "#b45309", "2 4", "triangle"),
    Series("Bounces", ("bounce", "blocked", "dsn-permanent", "dsn-temporary"), "#dc2626", "12 4 3 4", "diamond"),
    Series("Complaints", ("spamreport",), "#7c3aed", "5 5", "cross"),
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
    #: Series label -> events in each hour since the dispatch started, for the hours
    #: that have passed (at most CHART_HOURS).
    hourly: dict[str, list[int]] = field(default_factory=dict)
    scheduled: str | None = None  # the time it was scheduled for (stored format), if it was
    #: The topics the issue went to (`audience:`); empty: every active subscriber.
    audience: list[str] = field(default_factory=list)

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
            "audience": list(self.audience),
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
        scheduled=_scheduled(store, issue),
        audience=store.dispatch_audience(issue),
        **figures,
    )


def _scheduled(store: Store, issue: str) -> str | None:
    """The time the send was scheduled for (None for a send begun by hand)."""
    schedule = store.schedule_of(issue)
    return schedule.due if schedule is not None and schedule.zone else None


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
    """Events per hour of each series, for the hours that have passed since the
    dispatch started (a report made early shows no hours still to come as empty)."""
    passed = (_parse_time(store.now()) - _parse_time(started)).total_seconds() / 3600
    hours = min(CHART_HOURS, max(1, math.ceil(passed)))
    per_kind: dict[str, list[int]] = {}
    for hour, kind, n in store.events_per_hour(issue, started, hours):
        per_kind.setdefault(kind, [0] * hours)[hour] += n
    return {s.label: [sum(per_kind.get(k, [0] * hours)[h] for k in s.kinds) for h in range(hours)] for s in SERIES}


def _parse_time(value: str) -> datetime:
    """A time as the store writes it (`2024-01-12T08:00:00Z`)."""
    return datetime.fromisoformat(value)


def _when(moment: datetime | str) -> str:
    """A time as the report shows every time: local, to the minute, with its zone
    (`2024-01-12 10:00 CET`). A string is a time as the store writes it."""
    if isinstance(moment, str):
        moment = _parse_time(moment)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M %Z").strip()


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


def audience_words(audience: list[str]) -> str:
    """Whom a dispatch went to, in words."""
    return f"subscribers in the topics {', '.join(audience)}" if audience else "every active subscriber"


def format_table(report: Report) -> str:
    """The report as text for a terminal."""
    scheduled = f" (scheduled for {report.scheduled})" if report.scheduled else ""
    lines = [f"{report.issue}: sent through {report.backend}, dispatch started {report.started}{scheduled}", ""]
    lines.insert(1, f"audience: {audience_words(report.audience)}")
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
    env = ui_environment()  # the tool's own page, like the preview: not the newsletter's look
    return env.get_template("report.html.j2").render(
        report=report,
        newsletter=settings.name,
        rows=_rows(report),
        chart=_chart(report),
        percent=percent,
        started=_when(report.started),
        scheduled=_when(report.scheduled) if report.scheduled else None,
        generated=_when(generated or datetime.now(UTC)),
    )


# The chart: events per hour since the dispatch started, one line per series.
#
# A real send delivers nearly everything in its first hour, while opens trickle in
# over days and complaints are a handful: on a linear scale the delivery peak flattens
# every other line onto zero. The count axis is therefore logarithmic, with zero one
# step below 1 (0, 1, 10, 100 ... equally spaced): counts are whole numbers, so no
# value falls between 0 and 1, and each tick is a whole number.

_WIDTH, _HEIGHT = 720, 360
_LEFT, _RIGHT, _TOP, _BOTTOM = 72, 14, 30, 52  # room for "1,000" at a phone's label size
#: Shapes drawn on the lines, about 9 units across: where the path starts relative to
#: the point, and the rest of it in relative steps.
MARKERS = {
    "circle": (-4.5, 0.0, "a4.5,4.5 0 1,0 9,0a4.5,4.5 0 1,0 -9,0z"),
    "square": (-4.0, -4.0, "h8v8h-8z"),
    "triangle": (0.0, -5.0, "l5,9h-10z"),
    "diamond": (0.0, -5.5, "l5.5,5.5l-5.5,5.5l-5.5,-5.5z"),
    "cross": (-4.5, -4.5, "l9,9m0,-9l-9,9"),
}
#: The x axis's length for a number of hours, and its tick step: whole hours.
_SPANS = ((6, 1), (12, 2), (24, 4), (48, 8), (72, 12))
#: About this many markers along a busy line: enough to tell it by its shape.
_MARKS_PER_LINE = 18


def _level(value: float) -> float:
    """Where a count sits on the count axis, in steps: 0 -> 0, 1 -> 1, 10 -> 2, 100 -> 3."""
    return 0.0 if value <= 0 else 1 + math.log10(value)


def _marker(shape: str, x: float, y: float) -> str:
    """SVG path data for one marker centred on (x, y)."""
    dx, dy, rest = MARKERS[shape]
    return f"M{round(x + dx, 1):g},{round(y + dy, 1):g}{rest}"


def _line(points: list[tuple[float, float]], values: list[int]) -> str:
    """SVG path data through the points, leaving out each stretch where the count
    stays at 0: it lies on the axis, where it would only cover the other lines."""
    d: list[str] = []
    drawn_to = -1
    for i in range(1, len(points)):
        if values[i - 1] or values[i]:
            if drawn_to != i - 1:
                d.append("M{:g},{:g}".format(*points[i - 1]))
            d.append("L{:g},{:g}".format(*points[i]))
            drawn_to = i
    return "".join(d)


def _marked(values: list[int], nth: int) -> list[int]:
    """The hours that get a marker: every few hours (each series at its own offset,
    so markers do not sit on one another), and every hour with events between two
    without, which a line alone would hardly show; the peak too."""
    every = max(1, len(values) // _MARKS_PER_LINE)
    peak = max(range(len(values)), key=values.__getitem__, default=-1)
    out = []
    for h, v in enumerate(values):
        alone = not (h and values[h - 1]) and not (h + 1 < len(values) and values[h + 1])
        if v and (h % every == nth % every or alone or h == peak):
            out.append(h)
    return out


def _chart(report: Report) -> dict[str, Any]:
    """The chart's axes and series, for the template to draw."""
    plot_w, plot_h = _WIDTH - _LEFT - _RIGHT, _HEIGHT - _TOP - _BOTTOM
    hours = max((len(values) for values in report.hourly.values()), default=0) or 1
    span, step = next(((n, k) for n, k in _SPANS if n >= hours), _SPANS[-1])
    peak = max((max(values, default=0) for values in report.hourly.values()), default=0)
    top = max(2.0, math.ceil(_level(peak) * 2) / 2)  # half a step above the peak at most

    def x(hour: float) -> float:
        return round(_LEFT + plot_w * hour / span, 1)

    def y(value: float) -> float:
        return round(_TOP + plot_h * (1 - _level(value) / top), 1)

    series = []
    for nth, s in enumerate(SERIES):
        values = report.hourly.get(s.label, [])
        points = [(x(h + 0.5), y(v)) for h, v in enumerate(values)]  # each hour at its middle
        series.append(
            {
                "label": s.label,
                "colour": s.colour,
                "dash": s.dash,
                "filled": s.marker != "cross",
                "line": _line(points, values),
                "marks": "".join(_marker(s.marker, *points[h]) for h in _marked(values, nth)),
                "key": _marker(s.marker, 18, 7),  # in the legend's 36 x 14 sample
                "total": sum(values),
            }
        )
    y_ticks = [0] + [10**n for n in range(int(top))]  # 0, 1, 10, ... up to the top
    return {
        "width": _WIDTH,
        "height": _HEIGHT,
        "left": _LEFT,
        "right": _WIDTH - _RIGHT,
        "top": _TOP,
        "bottom": _TOP + plot_h,
        "y_ticks": [{"y": y(v), "label": f"{v:,}"} for v in y_ticks],
        "x_ticks": [{"x": x(h), "label": str(h)} for h in range(0, span + 1, step)],
        "series": series,
        "empty": peak == 0,
        "hours": hours,
    }


__all__ = [
    "JSON_KEYS",
    "RATE_KEYS",
    "LinkClicks",
    "Report",
    "build_report",
    "format_table",
    "percent",
    "render_html",
]
