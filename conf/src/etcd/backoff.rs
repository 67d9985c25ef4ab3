//! The reconnect delay of the etcd loops (the watch, a registration's
//! keep-alive): exponential from [`MIN`] to [`MAX`], back to [`MIN`] after
//! a success, optionally with random jitter so that many processes do not
//! retry in lockstep.

use std::time::Duration;

/// First delay.
pub const MIN: Duration = Duration::from_millis(50);
/// Longest delay.
pub const MAX: Duration = Duration::from_secs(2);

/// An exponential backoff between [`MIN`] and [`MAX`].
#[derive(Debug, Clone)]
pub struct Backoff {
    delay: Duration,
    jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    /// Starts at [`MIN`], without jitter.
    pub fn new() -> Self {
        Self {
            delay: MIN,
            jitter: 0.0,
        }
    }

    /// Adds up to `ratio` of the delay (0.25 = up to 25 % more), drawn
    /// anew for each wait.
    pub fn with_jitter(mut self, ratio: f64) -> Self {
        self.jitter = ratio.max(0.0);
        self
    }

    /// The delay of the next wait, before jitter.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Back to [`MIN`], after a success.
    pub fn reset(&mut self) {
        self.delay = MIN;
    }

    /// The next wait (the delay plus its jitter), doubling the delay for
    /// the wait after it, up to [`MAX`].
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.delay + self.delay.mul_f64(fastrand::f64() * self.jitter);
        self.delay = (self.delay * 2).min(MAX);
        wait
    }

    /// Sleeps for [`Backoff::next_wait`].
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_wait()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new();
        let waits: Vec<Duration> = (0..8).map(|_| b.next_wait()).collect();
        assert_eq!(waits[0], MIN);
        assert_eq!(waits[1], MIN * 2);
        assert_eq!(waits[7], MAX);
        b.reset();
        assert_eq!(b.delay(), MIN);
    }

    #[test]
    fn jitter_stays_within_its_share() {
        let mut b = Backoff::new().with_jitter(0.25);
        for _ in 0..100 {
            let delay = b.delay();
            let wait = b.next_wait();
            assert!(
                wait >= delay && wait <= delay.mul_f64(1.25),
                "{wait:?} for {delay:?}"
            );
        }
    }
}
