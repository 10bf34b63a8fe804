"""Dates as people write them in a search (`2023`, `2023-07`, `2023-07-14`, `2023-07-14T18:30`)
and as a collection shows them.

A year, a month or a day names a period: "taken after" it means from its start on, "taken
before" it means up to its end (so `--taken-after 2023-07 --taken-before 2023-07` is July).
A date with a time names an instant: after it means at or after it, before it means strictly
before it. Without an offset (`+02:00`, `Z`) a date is in this machine's local time.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone

from index.capture import CaptureTime

from .errors import QueryError

When = str | datetime
"""A bound of a date filter: a date as written (see the module), or a datetime (naive: this
machine's local time)."""

_PERIOD = re.compile(r"^(\d{4})(?:-(\d{1,2})(?:-(\d{1,2}))?)?$")
_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d")
FORMS = "a year (2023), a month (2023-07), a day (2023-07-14) or a date and time (2023-07-14T18:30)"


def period(text: str, *, option: str = "date") -> tuple[int, int]:
    """The [start, end) of the period a date names, in UTC epoch seconds; an instant's start
    and end are the same. Raises QueryError naming the option (if any) and the value."""
    value, named = text.strip(), f"{option} {text!r}".lstrip()
    try:
        match = _PERIOD.match(value)
        if match is not None:
            return _calendar_period(*match.groups())
        if _INSTANT.match(value):
            moment = _timestamp(datetime.fromisoformat(value.replace("Z", "+00:00")))
            return moment, moment
    except (ValueError, OverflowError) as e:
        raise QueryError(f"{named} is not a valid date ({e}); give {FORMS}") from e
    raise QueryError(f"{named} is not a date; give {FORMS}")


def _calendar_period(year: str, month: str | None, day: str | None) -> tuple[int, int]:
    y = int(year)
    if month is None:
        start, end = datetime(y, 1, 1), datetime(y + 1, 1, 1)
    elif day is None:
        m = int(month)
        start = datetime(y, m, 1)
        end = datetime(y + m // 12, m % 12 + 1, 1)
    else:
        start = datetime(y, int(month), int(day))
        end = start + timedelta(days=1)
    return _timestamp(start), _timestamp(end)


def _timestamp(moment: datetime) -> int:
    """UTC epoch seconds, rounded up (capture times are whole seconds, so a bound between two
    keeps its meaning); a naive datetime is this machine's local time."""
    return math.ceil(moment.timestamp())


def taken_range(
    after: When | None = None,
    before: When | None = None,
    *,
    names: tuple[str, str] = ("--taken-after", "--taken-before"),
) -> tuple[int | None, int | None]:
    """The [after, before) bounds in UTC epoch seconds (None: unbounded) of a date filter:
    `after` from the start of its period, `before` up to the end of its period.
    names: how the bounds are called in error messages."""
    start = None if after is None else _bound(after, names[0])[0]
    end = None if before is None else _bound(before, names[1])[1]
    if start is not None and end is not None and start >= end:
        raise QueryError(
            f"{names[0]} {_shown(after)} is not before {names[1]} {_shown(before)}: "
            "no photo can match"
        )
    return start, end


def _bound(value: When, option: str) -> tuple[int, int]:
    if isinstance(value, datetime):
        moment = _timestamp(value)
        return moment, moment
    return period(value, option=option)


def _shown(value: When | None) -> str:
    return value.isoformat() if isinstance(value, datetime) else repr(value)


def local_time(capture: CaptureTime) -> datetime:
    """The capture time at the wall clock it was taken by (its stored offset)."""
    zone = timezone(timedelta(minutes=capture.offset))
    return datetime.fromtimestamp(capture.taken, zone)
