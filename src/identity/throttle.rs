//! Login throttling: after too many failures for one account within a window, further
//! attempts are refused until the window passes, whatever the password. Counts are
//! per process; with several API replicas an attacker gets `replicas × limit` tries per
//! window, still far too few to matter against argon2id and a 12-character minimum.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct LoginThrottle {
    max_failures: u32,
    window: Duration,
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

impl LoginThrottle {
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Self {
            max_failures,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(retry_after)` while `account` is locked out.
    pub fn check(&self, account: &str) -> Result<(), Duration> {
        let map = self.failures.lock().expect("throttle lock");
        match map.get(account) {
            Some((count, since)) if *count >= self.max_failures => {
                let elapsed = since.elapsed();
                if elapsed < self.window {
                    Err(self.window - elapsed)
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    pub fn failed(&self, account: &str) {
        let mut map = self.failures.lock().expect("throttle lock");
        let now = Instant::now();
        // Forget stale entries now and then so the map cannot grow without bound.
        if map.len() > 10_000 {
            map.retain(|_, (_, since)| since.elapsed() < self.window);
        }
        let entry = map.entry(account.to_string()).or_insert((0, now));
        if entry.1.elapsed() >= self.window {
            *entry = (0, now);
        }
        entry.0 += 1;
    }

    pub fn succeeded(&self, account: &str) {
        self.failures.lock().expect("throttle lock").remove(account);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_after_limit_and_success_clears() {
        let t = LoginThrottle::new(2, Duration::from_secs(60));
        t.failed("a");
        assert!(t.check("a").is_ok());
        t.failed("a");
        let wait = t.check("a").unwrap_err();
        assert!(wait > Duration::from_secs(50));
        assert!(t.check("b").is_ok(), "other accounts are unaffected");
        t.succeeded("a");
        assert!(t.check("a").is_ok());
    }

    #[test]
    fn window_expiry_unlocks() {
        let t = LoginThrottle::new(1, Duration::from_millis(1));
        t.failed("a");
        std::thread::sleep(Duration::from_millis(5));
        assert!(t.check("a").is_ok());
    }
}
