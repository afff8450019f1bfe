//! Exponential backoff between retries: the one schedule every retry loop uses.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Delays that double from `first` up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// A schedule starting at `first`, never above `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            next: first,
            max,
        }
    }

    /// The delay before the next try; the one after is twice as long (up to `max`).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Back to the first delay, after a success.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// Sleeps the next delay; false if `cancel` fires first.
    pub async fn wait(&mut self, cancel: Option<&CancellationToken>) -> bool {
        let d = self.next_delay();
        match cancel {
            Some(c) => tokio::select! {
                _ = c.cancelled() => false,
                _ = tokio::time::sleep(d) => true,
            },
            None => {
                tokio::time::sleep(d).await;
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let seen: Vec<_> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(seen, [100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[tokio::test]
    async fn wait_ends_early_on_cancel() {
        let c = CancellationToken::new();
        c.cancel();
        let mut b = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        assert!(!b.wait(Some(&c)).await);
    }
}
