//! Bandwidth caps: token buckets per camera (bytes/s) and per site (frames/s and bytes/s), so
//! that a site's uplink is not saturated. A frame over any cap is dropped and counted, never
//! queued: a bucket only answers yes or no. Pure: the caller supplies the clock.

use std::time::Instant;

/// One token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens added per second.
    rate: f64,
    /// Most tokens held (the largest burst let through at once).
    burst: f64,
    /// Tokens now.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
}

impl TokenBucket {
    /// A full bucket. `burst` is at least one second's worth of `rate`.
    pub fn new(rate: f64, burst: f64, now: Instant) -> TokenBucket {
        let burst = burst.max(rate);
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.at = now;
    }

    /// Whether `n` tokens are there now (taking none).
    pub fn has(&mut self, n: f64, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= n.min(self.burst)
    }

    /// Tokens there now.
    pub fn available(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.tokens
    }

    /// Takes `n` tokens, going below zero if there are fewer: a pace, not a cap (the debt is
    /// repaid by waiting).
    pub fn owe(&mut self, n: f64) {
        self.tokens -= n;
    }

    /// Takes `n` tokens (after [`has`](Self::has) said yes). A request larger than the burst
    /// (one frame bigger than a second's bytes) passes on a full bucket and empties it.
    pub fn take(&mut self, n: f64) {
        self.tokens = (self.tokens - n).max(0.0);
    }
}

/// Which cap refused a frame (the `reason` label of dropped frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    CameraBytes,
    SiteFrames,
    SiteBytes,
}

impl Over {
    pub fn reason(self) -> &'static str {
        match self {
            Over::CameraBytes => "camera_bytes_cap",
            Over::SiteFrames => "site_fps_cap",
            Over::SiteBytes => "site_bytes_cap",
        }
    }
}

/// The caps of one site: a bucket per capped camera and the site's own.
#[derive(Debug)]
pub struct Caps {
    /// Per camera (by index), its bytes/s bucket if capped.
    camera_bytes: Vec<Option<TokenBucket>>,
    /// The site's frames/s bucket, if capped.
    site_frames: Option<TokenBucket>,
    /// The site's bytes/s bucket, if capped.
    site_bytes: Option<TokenBucket>,
}

impl Caps {
    /// Buckets holding two seconds' worth, so that cameras sampling at the same instant pass.
    pub fn new(
        camera_bytes: &[Option<u64>],
        site_fps: Option<f64>,
        site_bytes: Option<u64>,
        now: Instant,
    ) -> Caps {
        let bucket = |rate: f64| TokenBucket::new(rate, 2.0 * rate, now);
        Caps {
            camera_bytes: camera_bytes
                .iter()
                .map(|c| c.map(|r| bucket(r as f64)))
                .collect(),
            site_frames: site_fps.map(bucket),
            site_bytes: site_bytes.map(|r| bucket(r as f64)),
        }
    }

    /// Admits a frame of `bytes` from camera `camera`, or says which cap it is over. Tokens are
    /// taken only when every cap admits it, so a frame one cap refuses costs the others nothing.
    pub fn admit(&mut self, camera: usize, bytes: usize, now: Instant) -> Result<(), Over> {
        let b = bytes as f64;
        if let Some(c) = self.camera_bytes.get_mut(camera).and_then(Option::as_mut) {
            if !c.has(b, now) {
                return Err(Over::CameraBytes);
            }
        }
        if let Some(s) = &mut self.site_frames {
            if !s.has(1.0, now) {
                return Err(Over::SiteFrames);
            }
        }
        if let Some(s) = &mut self.site_bytes {
            if !s.has(b, now) {
                return Err(Over::SiteBytes);
            }
        }
        if let Some(c) = self.camera_bytes.get_mut(camera).and_then(Option::as_mut) {
            c.take(b);
        }
        if let Some(s) = &mut self.site_frames {
            s.take(1.0);
        }
        if let Some(s) = &mut self.site_bytes {
            s.take(b);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_lets_its_burst_through_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2.0, 4.0, t0);
        let passed = (0..10)
            .filter(|_| {
                let ok = b.has(1.0, t0);
                if ok {
                    b.take(1.0);
                }
                ok
            })
            .count();
        assert_eq!(passed, 4);
        assert!(!b.has(1.0, t0 + Duration::from_millis(400)));
        assert!(b.has(1.0, t0 + Duration::from_millis(500)));
        assert!(
            b.has(4.0, t0 + Duration::from_secs(100)),
            "refills to the burst"
        );
        assert!(!b.has(4.1, t0 + Duration::from_secs(100)) || b.has(4.1, t0));
    }

    #[test]
    fn the_site_caps_frames_across_cameras_and_refusals_cost_nothing() {
        let t0 = Instant::now();
        let mut caps = Caps::new(&[None, Some(1000)], Some(2.0), None, t0);
        // Two seconds' worth of site frames pass at once, then the site is over its cap.
        assert_eq!(caps.admit(0, 100, t0), Ok(()));
        assert_eq!(caps.admit(0, 100, t0), Ok(()));
        assert_eq!(caps.admit(0, 100, t0), Ok(()));
        assert_eq!(caps.admit(0, 100, t0), Ok(()));
        assert_eq!(caps.admit(0, 100, t0), Err(Over::SiteFrames));
        // Camera 1's bytes cap (2,000 in a burst): the site refusal took none of its tokens.
        assert_eq!(caps.admit(1, 1500, t0), Err(Over::SiteFrames));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(caps.admit(1, 1500, t1), Ok(()));
        assert_eq!(caps.admit(1, 1500, t1), Err(Over::CameraBytes));
    }

    #[test]
    fn a_pace_lends_one_frame_and_waits_for_the_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000.0, 1000.0, t0);
        assert_eq!(b.available(t0), 1000.0);
        b.owe(3000.0);
        assert!(b.available(t0 + Duration::from_secs(1)) < 1.0);
        assert_eq!(b.available(t0 + Duration::from_secs(3)), 1000.0);
    }

    #[test]
    fn the_site_caps_bytes() {
        let t0 = Instant::now();
        let mut caps = Caps::new(&[None], None, Some(10_000), t0);
        let passed = (0..10).filter(|_| caps.admit(0, 5_000, t0).is_ok()).count();
        assert_eq!(passed, 4);
        assert_eq!(caps.admit(0, 5_000, t0), Err(Over::SiteBytes));
        assert_eq!(Over::SiteBytes.reason(), "site_bytes_cap");
    }
}
