//! Runtime control of a pipeline: pause/resume and the rate limit. Changed by the HTTP API,
//! obeyed by the full-sync workers and the streaming dispatcher within a moment.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Shared switches of one pipeline.
#[derive(Debug)]
pub struct Control {
    paused: watch::Sender<bool>,
    limiter: Mutex<Limiter>,
}

/// A virtual-clock token bucket: each taken unit moves the next free instant on by 1/rate, so
/// the long-run rate is exact and a change applies to the next unit.
#[derive(Debug)]
struct Limiter {
    /// Units per second; 0 = unlimited.
    rate: u64,
    next: Instant,
}

impl Default for Control {
    fn default() -> Self {
        Self::new(0)
    }
}

impl Control {
    /// Unpaused, with a rate limit of `rate` ops/s (0 = none).
    pub fn new(rate: u64) -> Self {
        Self {
            paused: watch::channel(false).0,
            limiter: Mutex::new(Limiter {
                rate,
                next: Instant::now(),
            }),
        }
    }

    /// Stops applying until [`Control::resume`].
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    /// Continues applying.
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }

    /// Whether paused.
    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// The rate limit in ops/s (0 = unlimited).
    pub fn rate(&self) -> u64 {
        self.limiter.lock().unwrap().rate
    }

    /// Sets the rate limit in ops/s (0 = unlimited).
    pub fn set_rate(&self, rate: u64) {
        let mut l = self.limiter.lock().unwrap();
        l.rate = rate;
        l.next = Instant::now();
    }

    /// Waits while paused; returns false if `stop` fires first.
    pub async fn wait_unpaused(&self, stop: &CancellationToken) -> bool {
        let mut rx = self.paused.subscribe();
        loop {
            if !*rx.borrow_and_update() {
                return true;
            }
            tokio::select! {
                _ = stop.cancelled() => return false,
                r = rx.changed() => if r.is_err() { return true },
            }
        }
    }

    /// Waits for pause and for `n` units of the rate limit; returns false if `stop` fires.
    pub async fn admit(&self, n: u64, stop: &CancellationToken) -> bool {
        if !self.wait_unpaused(stop).await {
            return false;
        }
        let at = {
            let mut l = self.limiter.lock().unwrap();
            if l.rate == 0 {
                return true;
            }
            let now = Instant::now();
            // Idle time is not banked beyond a tenth of a second of burst.
            let floor = now.checked_sub(Duration::from_millis(100)).unwrap_or(now);
            let start = l.next.max(floor);
            l.next = start + Duration::from_secs_f64(n as f64 / l.rate as f64);
            start
        };
        tokio::select! {
            _ = stop.cancelled() => false,
            _ = tokio::time::sleep_until(at) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rate_limit_spaces_units() {
        let c = Control::new(100);
        let stop = CancellationToken::new();
        let t = tokio::time::Instant::now();
        for _ in 0..50 {
            assert!(c.admit(1, &stop).await);
        }
        let took = t.elapsed();
        // 50 units at 100/s, less the 0.1 s of burst a fresh limiter allows.
        assert!(
            took >= Duration::from_millis(390) && took <= Duration::from_millis(510),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn pause_blocks_until_resume_or_stop() {
        let c = std::sync::Arc::new(Control::new(0));
        let stop = CancellationToken::new();
        c.pause();
        let (c2, s2) = (c.clone(), stop.clone());
        let waiter = tokio::spawn(async move { c2.wait_unpaused(&s2).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        c.resume();
        assert!(waiter.await.unwrap());
        c.pause();
        stop.cancel();
        assert!(!c.wait_unpaused(&stop).await);
    }
}
