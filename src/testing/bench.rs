//! What the CPU benches (`benches/project.rs`, `benches/optim.rs`) share: their
//! environment ([`bench_quick`], [`bench_threads`]), a multi-threaded memcpy to compare
//! every case with ([`memcpy_gbs`], [`Memcpy`]), and [`Rounds`]: cases run in turn, round
//! after round, so that a shared machine's busy periods slow each of them alike, with
//! per-round times and per-round ratios to a reference case (the memcpy).

use std::time::Instant;

/// `REDREG_BENCH_QUICK` set (and not `0`): the CPU benches' short mode (CI speed).
pub fn bench_quick() -> bool {
    std::env::var("REDREG_BENCH_QUICK").is_ok_and(|v| v != "0" && !v.is_empty())
}

/// `REDREG_BENCH_THREADS`, else the machine's available parallelism: the CPU benches'
/// thread count.
pub fn bench_threads() -> usize {
    std::env::var("REDREG_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Multi-threaded memcpy bandwidth in GB/s (bytes read plus bytes written), on `pool`'s
/// threads, over a source of `bytes` bytes (at least 16 KiB); the best of a few runs. The
/// CPU benches report every case as a ratio to this rate measured in the same run.
pub fn memcpy_gbs(pool: &rayon::ThreadPool, bytes: usize) -> f64 {
    let mut m = Memcpy::new(bytes);
    let reps = if m.bytes() < (16 << 20) { 200 } else { 8 };
    (0..reps).map(|_| m.gbs(pool)).fold(0.0, f64::max)
}

/// A memcpy whose buffers are allocated (and touched) once, to time again and again: the
/// benches interleave it with the case they measure, so that each round's ratio compares
/// the two under the same load (a shared machine's memory bandwidth moves by 2× between
/// seconds).
pub struct Memcpy {
    src: Vec<f32>,
    dst: Vec<f32>,
}

impl Memcpy {
    /// Buffers for a source of `bytes` bytes (at least 16 KiB).
    pub fn new(bytes: usize) -> Self {
        let n = (bytes / 4).max(1 << 12);
        // Both written now (not zeros): calloc's pages are mapped on first write, which
        // would land in the first timed copy.
        Memcpy {
            src: vec![1.0f32; n],
            dst: vec![0.5f32; n],
        }
    }

    /// The source's size in bytes.
    pub fn bytes(&self) -> usize {
        4 * self.src.len()
    }

    /// One copy on `pool`'s threads (pieces of 256 KiB), untimed: the reference case of
    /// [`Rounds`] (whose GB/s count [`copied`](Self::copied) bytes).
    pub fn copy(&mut self, pool: &rayon::ThreadPool) {
        use rayon::prelude::*;
        pool.install(|| {
            self.dst
                .par_chunks_mut(1 << 16)
                .zip(self.src.par_chunks(1 << 16))
                .for_each(|(d, s)| d.copy_from_slice(s))
        });
        std::hint::black_box(&mut self.dst);
    }

    /// The bytes one copy moves, read plus written: `2·`[`bytes`](Self::bytes).
    pub fn copied(&self) -> usize {
        2 * self.bytes()
    }

    /// One [`copy`](Self::copy), timed; its GB/s, read plus written.
    pub fn gbs(&mut self, pool: &rayon::ThreadPool) -> f64 {
        let t = Instant::now();
        self.copy(pool);
        self.copied() as f64 / t.elapsed().as_secs_f64() / 1e9
    }
}

/// Cases run in turn, round after round (case 0, 1, …, then again), each call timed: on
/// a shared machine whose memory bandwidth moves by 2× between seconds, a ratio of two
/// cases taken within one round compares them under the same load, and the fastest round
/// of each case is the least disturbed one.
///
/// ```
/// use redreg::testing::bench::Rounds;
/// let mut calls = Vec::new();
/// let r = Rounds::run(3, 2, |case| calls.push(case));
/// assert_eq!(calls, [0, 1, 0, 1, 0, 1]);
/// assert_eq!((r.rounds(), r.times(1).len()), (3, 3));
/// ```
#[derive(Clone, Debug)]
pub struct Rounds {
    /// `times[case][round]`, seconds.
    times: Vec<Vec<f64>>,
}

impl Rounds {
    /// `rounds` rounds of `f(0)`, `f(1)`, …, `f(cases - 1)`, each call timed alone. The
    /// cases are one closure of the case's index, so that they may share mutable state (the
    /// optimizer bench's cases step the same parameters); a reference case, such as a
    /// [`Memcpy::copy`], is one of them.
    pub fn run(rounds: usize, cases: usize, mut f: impl FnMut(usize)) -> Rounds {
        let mut times = vec![Vec::with_capacity(rounds); cases];
        for _ in 0..rounds {
            for (case, t) in times.iter_mut().enumerate() {
                let start = Instant::now();
                f(case);
                t.push(start.elapsed().as_secs_f64());
            }
        }
        Rounds { times }
    }

    /// The number of rounds.
    pub fn rounds(&self) -> usize {
        self.times.first().map_or(0, Vec::len)
    }

    /// The seconds of each round's call of `case`.
    pub fn times(&self, case: usize) -> &[f64] {
        &self.times[case]
    }

    /// The fastest round's seconds of `case` (+∞ without rounds).
    pub fn min(&self, case: usize) -> f64 {
        self.times[case]
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
    }

    /// Each round's GB/s of `case`, counted as `bytes` per call.
    pub fn gbs(&self, case: usize, bytes: f64) -> Vec<f64> {
        self.times[case].iter().map(|t| bytes / t / 1e9).collect()
    }

    /// Each round's ratio of `case`'s GB/s (`bytes` per call) to `reference`'s GB/s
    /// (`reference_bytes` per call) in the same round.
    pub fn ratios(
        &self,
        case: usize,
        bytes: f64,
        reference: usize,
        reference_bytes: f64,
    ) -> Vec<f64> {
        let r = self.gbs(reference, reference_bytes);
        (self.gbs(case, bytes).iter().zip(r))
            .map(|(g, r)| g / r)
            .collect()
    }
}

/// The smallest, the median (for an even count the upper one) and the largest of some
/// values (NaN for none).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    /// The smallest value.
    pub min: f64,
    /// The median: the value at index `n / 2` of the sorted values.
    pub median: f64,
    /// The largest value.
    pub max: f64,
}

impl Spread {
    /// The spread of `values`.
    pub fn of(values: &[f64]) -> Spread {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => Spread {
                min: f64::NAN,
                median: f64::NAN,
                max: f64::NAN,
            },
            n => Spread {
                min: v[0],
                median: v[n / 2],
                max: v[n - 1],
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_run_the_cases_in_turn() {
        let mut calls = Vec::new();
        let r = Rounds::run(4, 3, |case| calls.push(case));
        assert_eq!(calls, [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2]);
        assert_eq!(r.rounds(), 4);
        for case in 0..3 {
            assert_eq!(r.times(case).len(), 4);
            assert!(r.times(case).iter().all(|&t| t >= 0.0));
            assert_eq!(r.min(case), Spread::of(r.times(case)).min);
        }
        assert_eq!(Rounds::run(0, 2, |_| unreachable!()).rounds(), 0);
    }

    #[test]
    fn ratios_are_taken_per_round() {
        // Round 0: the case takes 2 s for 8 GB (4 GB/s), the reference 1 s for 2 GB
        // (2 GB/s): ratio 2. Round 1: 4 s (2 GB/s) against 0.5 s (4 GB/s): ratio 0.5.
        let r = Rounds {
            times: vec![vec![1.0, 0.5], vec![2.0, 4.0]],
        };
        assert_eq!(r.gbs(1, 8e9), [4.0, 2.0]);
        assert_eq!(r.ratios(1, 8e9, 0, 2e9), [2.0, 0.5]);
        assert_eq!(r.ratios(0, 2e9, 0, 2e9), [1.0, 1.0]);
        assert_eq!(r.min(1), 2.0);
    }

    #[test]
    fn spread_is_min_median_max() {
        let s = Spread::of(&[3.0, 1.0, 2.0, 5.0]);
        assert_eq!((s.min, s.median, s.max), (1.0, 3.0, 5.0));
        let s = Spread::of(&[2.0, 9.0, 4.0]);
        assert_eq!((s.min, s.median, s.max), (2.0, 4.0, 9.0));
        assert!(Spread::of(&[]).median.is_nan());
    }
}
