//! The time budget of `xtask gpu-run` (was `budget_for` and `tmo` in scripts/gpu-check.sh).
//!
//! The whole run stays inside REDREG_GPU_BUDGET_S seconds (default 540: a lent GPU gives
//! 10 minutes per command). Each step gets min(its own timeout, what is left - a reserve for
//! the summary); a step that cannot get its minimum is skipped and says so.

use std::time::Instant;

/// Seconds kept back for the summary and the log archive.
pub const RESERVE_S: i64 = 15;
/// The budget when REDREG_GPU_BUDGET_S is not set.
pub const DEFAULT_BUDGET_S: i64 = 540;

pub struct Budget {
    pub total_s: i64,
    t0: Instant,
}

impl Budget {
    /// Starts the clock now, with REDREG_GPU_BUDGET_S (default 540) seconds in all.
    pub fn from_env() -> Budget {
        Budget {
            total_s: crate::env_num("REDREG_GPU_BUDGET_S", DEFAULT_BUDGET_S),
            t0: Instant::now(),
        }
    }

    /// Whole seconds since the start (bash's `$SECONDS - RUN_T0`).
    pub fn elapsed_s(&self) -> i64 {
        self.t0.elapsed().as_secs() as i64
    }

    /// Seconds to allow a step that wants `want` and needs at least `min`; 0: skip it.
    pub fn budget_for(&self, want: i64, min: i64) -> i64 {
        budget_for(self.total_s, self.elapsed_s(), want, min)
    }

    /// A timeout for a step that is run whatever is left (never 0, which for `timeout`
    /// meant no limit at all).
    pub fn tmo(&self, want: i64, min: i64) -> i64 {
        tmo(self.total_s, self.elapsed_s(), want, min)
    }
}

/// min(want, total - elapsed - reserve), or 0 when that is below `min`.
pub fn budget_for(total_s: i64, elapsed_s: i64, want: i64, min: i64) -> i64 {
    let left = total_s - elapsed_s - RESERVE_S;
    let want = want.min(left);
    if want < min {
        0
    } else {
        want
    }
}

/// `budget_for`, with 0 raised to 1 s.
pub fn tmo(total_s: i64, elapsed_s: i64, want: i64, min: i64) -> i64 {
    match budget_for(total_s, elapsed_s, want, min) {
        0 => 1,
        b => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_gets_its_timeout_or_what_is_left_or_nothing() {
        // plenty left: the step's own timeout
        assert_eq!(budget_for(540, 0, 200, 20), 200);
        // 540 - 400 - 15 = 125 left: capped
        assert_eq!(budget_for(540, 400, 200, 20), 125);
        // exactly the minimum left still runs
        assert_eq!(budget_for(540, 505, 200, 20), 20);
        // one second short of the minimum: skipped
        assert_eq!(budget_for(540, 506, 200, 20), 0);
        // past the budget (negative left): skipped, never negative
        assert_eq!(budget_for(540, 600, 200, 20), 0);
        // a small budget (the emulated rehearsal's 300 s)
        assert_eq!(budget_for(300, 0, 200, 20), 200);
        assert_eq!(budget_for(300, 100, 200, 20), 185);
        assert_eq!(budget_for(300, 230, 180, 60), 0);
    }

    #[test]
    fn tmo_is_never_zero() {
        assert_eq!(tmo(540, 0, 180, 10), 180);
        assert_eq!(tmo(540, 520, 180, 10), 1);
        assert_eq!(tmo(540, 700, 60, 10), 1);
        assert_eq!(tmo(540, 500, 60, 10), 25);
    }
}
