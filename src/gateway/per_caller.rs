//! A bound on how many of something one caller holds at once: work gantry does on a
//! caller's behalf beyond the request in hand (a task's `tasks/result` call waiting for
//! questions, a listen stream's watched task), which no caller may take without limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How many each caller holds, up to `limit`.
pub struct PerCaller {
    limit: usize,
    held: Mutex<HashMap<String, usize>>,
}

/// One of a caller's; given back when dropped.
pub struct Slot {
    of: Arc<PerCaller>,
    caller: String,
}

impl PerCaller {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            held: Mutex::default(),
        })
    }

    /// One more for `caller`, or `None` when it holds `limit` already.
    pub fn take(self: &Arc<Self>, caller: &str) -> Option<Slot> {
        let mut held = self.held.lock().unwrap();
        let count = held.entry(caller.to_string()).or_default();
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(Slot {
            of: Arc::clone(self),
            caller: caller.to_string(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.of.held.lock().unwrap();
        if let Some(count) = held.get_mut(&self.caller) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_holds_a_bounded_number_and_gets_them_back() {
        let bound = PerCaller::new(3);
        let mine: Vec<_> = (0..3).map(|_| bound.take("me").expect("room")).collect();
        assert!(bound.take("me").is_none(), "the caller's are all taken");
        assert!(bound.take("another").is_some(), "another caller's are not");
        drop(mine);
        assert!(bound.take("me").is_some(), "given back when dropped");
        assert_eq!(
            bound.held.lock().unwrap().len(),
            0,
            "nothing kept for idle callers"
        );
    }
}
