//! Reconnection delays: exponential from [`Backoff::initial`] doubling to [`Backoff::cap`],
//! each drawn at random between half and all of its step ("equal jitter"), so that the cameras
//! of a site that went down together (a switch rebooted) do not knock on their streams in step.
//! Pure: the caller supplies the random draw, so the tests pin it.

use std::time::Duration;

/// One camera's reconnection schedule.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// The first delay's step.
    pub initial: Duration,
    /// No delay is longer than this.
    pub cap: Duration,
    /// Failed attempts since the last success.
    attempts: u32,
}

impl Backoff {
    pub fn new(initial: Duration, cap: Duration) -> Backoff {
        Backoff {
            initial,
            cap: cap.max(initial),
            attempts: 0,
        }
    }

    /// The delay before the next attempt, after one more failure; `draw` is uniform in [0, 1).
    pub fn next_delay(&mut self, draw: f64) -> Duration {
        let step = self
            .initial
            .saturating_mul(1u32 << self.attempts.min(20))
            .min(self.cap);
        self.attempts = self.attempts.saturating_add(1);
        step.mul_f64(0.5 + 0.5 * draw.clamp(0.0, 1.0))
    }

    /// Failed attempts since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// A success: the next failure starts from the first step again.
    pub fn reset(&mut self) {
        self.attempts = 0;
    }
}

/// A small random source for jitter (xorshift64*, seeded from the OS); not for secrets.
#[derive(Debug, Clone)]
pub struct Jitter(
    /// The generator's state (never zero).
    u64,
);

impl Jitter {
    pub fn from_os() -> Jitter {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        Jitter(u64::from_le_bytes(b) | 1)
    }

    /// Uniform in [0, 1).
    pub fn draw(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_jitter_within_half_a_step() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let full: Vec<u64> = (0..8).map(|_| b.next_delay(1.0).as_secs()).collect();
        assert_eq!(full, [1, 2, 4, 8, 16, 30, 30, 30]);
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert_eq!(b.next_delay(0.0), Duration::from_millis(500));
        assert_eq!(b.next_delay(0.5), Duration::from_millis(1500));
        for _ in 0..100 {
            b.next_delay(0.99);
        }
        assert!(
            b.next_delay(0.99) <= Duration::from_secs(30),
            "capped forever"
        );
    }

    #[test]
    fn jitter_draws_spread_over_the_unit_interval() {
        let mut j = Jitter(12345);
        let draws: Vec<f64> = (0..1000).map(|_| j.draw()).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        let low = draws.iter().filter(|d| **d < 0.5).count();
        assert!((400..600).contains(&low), "{low}");
    }
}
