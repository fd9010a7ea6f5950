"""Retry pacing computed by tenacity: the edge drives the attempts, tenacity says when and whether."""

from __future__ import annotations

from tenacity import AsyncRetrying, RetryCallState, stop_after_attempt, wait_exponential_jitter


class Backoff:
    """Bounded attempts with jittered exponential waits, asked once per failed attempt."""

    def __init__(self, *, attempts: int, base_s: float, max_s: float) -> None:
        self.policy = AsyncRetrying(
            stop=stop_after_attempt(attempts),
            wait=wait_exponential_jitter(multiplier=base_s, max=max_s, jitter=base_s),
        )

    def delay(self, *, failures: int) -> float | None:
        """Seconds to wait before the next attempt after `failures` failed ones, or None to stop."""
        state = RetryCallState(self.policy, None, (), {})
        state.attempt_number = failures
        if self.policy.stop(state):
            return None
        return float(self.policy.wait(state))
