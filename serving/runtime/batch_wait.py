"""When a free model instance stops waiting for a fuller batch: a pure policy over clock
readings (seconds, any monotonic clock), no asyncio; `DynamicBatcher` keeps the timers.

Batch size matters even with a fast model: every batch costs a fixed hand-off to the model
thread and back, and on 2 cores that cost, not the model, limits a server under concurrent
load. So a free instance may wait:
- a request whose previous batch held one image (calls made one at a time) runs at once;
- otherwise it waits until the queue holds as many images as the largest of the last
  RECENT_BATCHES batches (so batches follow the load's concurrency instead of shrinking
  because the instance came free a moment early), or until no request has come for
  1/GAP_FRACTION of the delay (the burst is over), or the delay has passed, whichever is first;
- `wait_for_full` waits for `max_batch_size` images instead, lone requests too (Triton's fixed
  queue delay).

Example:
    wait = BatchWait(max_batch_size=64, max_queue_delay_us=2000)
    wait.ran(12); wait.arrived(now)
    if wait.needed(queued=5): check_at = wait.begin(now)   # then: wait.next_check(later) -> None: go
"""
from __future__ import annotations

import collections

GAP_FRACTION = 4     # a wait ends once no request came for this fraction of the queue delay
RECENT_BATCHES = 16  # a wait ends once the queue holds as many images as the largest of these


class BatchWait:
    def __init__(self, max_batch_size: int, max_queue_delay_us: int, wait_for_full: bool = False) -> None:
        self.max_batch_size = max_batch_size
        self.delay = max_queue_delay_us / 1e6
        self.gap = self.delay / GAP_FRACTION
        self.wait_for_full = wait_for_full
        self.recent: collections.deque[int] = collections.deque([0], maxlen=RECENT_BATCHES)  # images per batch
        self.last_arrival = 0.0
        self.until = 0.0  # when the current wait ends at the latest

    def arrived(self, now: float) -> None:
        """A request joined the queue."""
        self.last_arrival = now

    def ran(self, images: int) -> None:
        """A batch of `images` started."""
        self.recent.append(images)

    def target(self) -> int:
        """Images worth waiting for."""
        if self.wait_for_full:
            return self.max_batch_size
        if self.recent[-1] <= 1:
            return 1
        return min(max(self.recent), self.max_batch_size)

    def needed(self, queued: int) -> bool:
        """Should a free instance with `queued` images waiting wait for more?"""
        return bool(self.delay) and queued < self.target()

    def begin(self, now: float) -> float:
        """Start a wait; returns when to check first (see `next_check`)."""
        self.until = now + self.delay
        return now + min(self.delay, self.gap)

    def next_check(self, now: float) -> float | None:
        """None: stop waiting now; else the time to check again."""
        until = min(self.until, self.last_arrival + self.gap)
        return None if now >= until else until
