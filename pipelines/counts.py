"""What a batch run read, rejected, filtered and wrote: shared by both engines."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date


@dataclass
class Counts:
    """What a run read: per UTC day in its range, and in total."""

    read: int = 0         # rows in range, plus rows with a null event time
    rejected: int = 0     # null entity key or null event time
    filtered: int = 0     # dropped by the view's filter
    written: int = 0      # partial rows written
    per_day: dict[date, int] = field(default_factory=dict)  # rows read per event day
    output_days: set[date] = field(default_factory=set)     # days with events after the filter
