"""What every benchmark script needs besides its own work."""

from __future__ import annotations

import resource


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
