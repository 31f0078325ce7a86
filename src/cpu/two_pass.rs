//! The schedule of a two-pass step on the CPU (the projection's pass 1, per-tensor solve and
//! pass 2): every thread of the pool claims chunks from two queues in one parallel region,
//! so that no thread waits at a barrier between cache groups.
//!
//! # Why
//! Run as one parallel loop per pass and per cache group, a step over a model's tensors
//! meets two barriers per group. At each, one thread idles while the other finishes its last
//! chunk, and a pool thread that went to sleep must be woken. On this project's 2-core VM a
//! bf16 drift step over the ResNet-18 pair (about 20 groups) lost 0.5–2.7 ms of 11 to it;
//! with one thread it lost nothing (docs/benchmarks.md, session 14).
//!
//! # The schedule
//! - Pass 1 of a chunk can run any time: chunks are claimed in task order.
//! - A segment is *ready* when pass 1 of its last chunk is done: the thread that finishes it
//!   merges the segment's chunk partials in chunk order and solves (the same sums in the
//!   same order as one parallel loop, so the same bits whatever the thread count or timing).
//! - Pass 2 of a chunk runs once its segment is ready: chunks are claimed in pass 2's order
//!   (group by group, a `backwards` group in reverse chunk order) and a thread takes the
//!   next one as soon as it is ready, before any pass 1 chunk, so pass 2 reads what pass 1
//!   read while it is still cached.
//! - Pass 1 runs at most one cache group ahead of pass 2: the window that keeps a group's
//!   operands cached between its two passes, and the work a thread takes while pass 2's next
//!   chunk waits for its segment.
//!
//! A thread that finds nothing claimable spins (then yields): the only thing it can wait for
//! is a chunk another thread is running. A thread that starts late finds its share taken.

use super::CpuBackend;
use crate::segments::ChunkTask;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

/// The order of a two-pass step's chunks: its tasks, and its cache groups (consecutive
/// segment ranges), each with whether its pass 2 runs backwards.
pub(crate) struct TwoPass<'a> {
    tasks: &'a [ChunkTask],
    segments: usize,
    /// The group of each task.
    group: Vec<usize>,
    /// Pass 2's task order.
    order2: Vec<usize>,
}

impl<'a> TwoPass<'a> {
    /// The schedule of `tasks` (a chunk table over `segments` segments) in `groups` (the
    /// segment ranges of the cache groups, in order, covering every segment).
    pub(crate) fn new(
        tasks: &'a [ChunkTask],
        segments: usize,
        groups: &[(Range<usize>, bool)],
    ) -> Self {
        let mut group_of_seg = vec![0; segments];
        for (g, (r, _)) in groups.iter().enumerate() {
            group_of_seg[r.clone()].iter_mut().for_each(|x| *x = g);
        }
        let group: Vec<usize> = tasks.iter().map(|t| group_of_seg[t.seg]).collect();
        let mut order2 = Vec::with_capacity(tasks.len());
        let mut first = 0;
        for (g, (_, backwards)) in groups.iter().enumerate() {
            let end = first + group[first..].iter().take_while(|&&x| x == g).count();
            if *backwards {
                order2.extend((first..end).rev());
            } else {
                order2.extend(first..end);
            }
            first = end;
        }
        Self {
            tasks,
            segments,
            group,
            order2,
        }
    }

    /// Runs the step on `be`'s threads (on the calling thread alone for a call of at most
    /// `elements` ≤ the inline limit) and returns each segment's solution. `items` holds
    /// one value per task (its piece of the destination, say), lent to its pass 1 and then
    /// given to its pass 2:
    ///
    /// - `pass1(i, item)`: pass 1 of task `i`, its partial;
    /// - `solve(s, partials)`: segment `s` from its chunks' partials in chunk order (empty
    ///   for a segment without chunks);
    /// - `pass2(i, item, solution)`: pass 2 of task `i`.
    pub(crate) fn run<I, P, S>(
        &self,
        be: &CpuBackend,
        elements: usize,
        items: Vec<I>,
        pass1: impl Fn(usize, &I) -> P + Sync,
        solve: impl Fn(usize, &[&P]) -> S + Sync,
        pass2: impl Fn(usize, I, &S) + Sync,
    ) -> Vec<S>
    where
        I: Send,
        P: Send + Sync,
        S: Send + Sync,
    {
        let n = self.tasks.len();
        assert_eq!(items.len(), n, "one item per task");
        // A task's item: read by its pass 1, taken by its pass 2 (never at the same time:
        // pass 2 waits for the segment's pass 1), so each lock is uncontended.
        let items: Vec<Mutex<Option<I>>> = items.into_iter().map(|x| Mutex::new(Some(x))).collect();
        let lock = |i: usize| items[i].lock().unwrap_or_else(PoisonError::into_inner);
        let mut first = vec![n; self.segments + 1];
        let mut left = vec![0usize; self.segments];
        for (i, t) in self.tasks.iter().enumerate().rev() {
            first[t.seg] = i;
            left[t.seg] += 1;
        }
        for s in (0..self.segments).rev() {
            first[s] = first[s].min(first[s + 1]);
        }
        let st = State {
            parts: (0..n).map(|_| OnceLock::new()).collect(),
            left: left.iter().map(|&l| AtomicUsize::new(l)).collect(),
            solved: (0..self.segments).map(|_| OnceLock::new()).collect(),
            next1: AtomicUsize::new(0),
            next2: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
        };
        // Segments without a chunk are ready from the start.
        for (s, &l) in left.iter().enumerate() {
            if l == 0 {
                let _ = st.solved[s].set(solve(s, &[]));
            }
        }
        let finish1 = |i: usize| {
            let p = pass1(i, lock(i).as_ref().expect("pass 1 before pass 2"));
            let _ = st.parts[i].set(p);
            let s = self.tasks[i].seg;
            // AcqRel: the thread that takes the count to zero sees every chunk's partial.
            if st.left[s].fetch_sub(1, Ordering::AcqRel) == 1 {
                let parts: Vec<&P> = (first[s]..first[s + 1])
                    .map(|j| st.parts[j].get().expect("pass 1 done"))
                    .collect();
                let _ = st.solved[s].set(solve(s, &parts));
            }
        };
        let worker = || {
            // A panic in this thread stops the others (they could wait for its chunk).
            let _poison = Poison(&st.failed);
            let mut idle = 0u32;
            loop {
                if st.failed.load(Ordering::Relaxed) {
                    return;
                }
                let j2 = st.next2.load(Ordering::Acquire);
                let Some(&i2) = self.order2.get(j2) else {
                    return;
                };
                if let Some(sol) = st.solved[self.tasks[i2].seg].get() {
                    if st
                        .next2
                        .compare_exchange(j2, j2 + 1, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                    {
                        let item = lock(i2).take().expect("pass 2 once per task");
                        pass2(i2, item, sol);
                        idle = 0;
                    }
                    continue;
                }
                let j1 = st.next1.load(Ordering::Acquire);
                if j1 < n && self.group[j1] <= self.group[i2] + 1 {
                    if st
                        .next1
                        .compare_exchange(j1, j1 + 1, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                    {
                        finish1(j1);
                        idle = 0;
                    }
                    continue;
                }
                // Pass 2's next chunk waits for a pass 1 chunk another thread is running.
                idle += 1;
                if idle < 128 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        };
        be.workers(elements, worker);
        st.solved
            .into_iter()
            .map(|s| s.into_inner().expect("every segment solved"))
            .collect()
    }
}

/// The shared state of one run.
struct State<P, S> {
    /// Each task's pass 1 partial.
    parts: Vec<OnceLock<P>>,
    /// Per segment, its chunks whose pass 1 is not done.
    left: Vec<AtomicUsize>,
    /// Per segment, its solution once ready.
    solved: Vec<OnceLock<S>>,
    /// The next pass 1 task (task order).
    next1: AtomicUsize,
    /// The next pass 2 task (index into `order2`).
    next2: AtomicUsize,
    /// A thread panicked: the others return.
    failed: AtomicBool,
}

/// Sets its flag when dropped by a panicking thread.
struct Poison<'a>(&'a AtomicBool);

impl Drop for Poison<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segments::{chunk_tasks, Segments};
    use std::sync::Mutex;

    /// Every chunk's pass 1 runs once, before its segment's solve; the solve sees the
    /// partials in chunk order; pass 2 of a chunk runs once, after its solve; pass 2 runs in
    /// the groups' order (backwards where asked) on one thread; pass 1 never runs more than
    /// one group ahead of pass 2 (the last chunk of segment 0 takes 30 ms, so that the other
    /// threads find pass 2 waiting and go as far ahead as the window lets them).
    #[test]
    fn runs_every_chunk_once_in_dependency_order() {
        let segs = Segments::from_lengths(&[5, 0, 17, 3, 40, 1, 9]).unwrap();
        let tasks = chunk_tasks(&segs, 4).unwrap();
        let groups = vec![(0..3, false), (3..4, false), (4..5, true), (5..7, false)];
        let plan = TwoPass::new(&tasks, segs.len(), &groups);
        for threads in [1, 2, 5] {
            let be = CpuBackend::with_threads(threads)
                .unwrap()
                .with_inline_elements(0);
            let log = Mutex::new(Vec::new());
            let sols = plan.run(
                &be,
                segs.total(),
                (0..tasks.len()).collect(),
                |i, &item| {
                    assert_eq!(item, i, "task {i} lent another task's item");
                    log.lock().unwrap().push((1, i));
                    if i == 1 && threads > 1 {
                        std::thread::sleep(std::time::Duration::from_millis(30));
                    }
                    i
                },
                |s, parts: &[&usize]| {
                    log.lock().unwrap().push((0, s));
                    parts.iter().map(|&&i| i).collect::<Vec<_>>()
                },
                |i, item, sol: &Vec<usize>| {
                    assert_eq!(item, i, "task {i} given another task's item");
                    assert!(sol.contains(&i), "pass 2 of {i} with another segment");
                    log.lock().unwrap().push((2, i));
                },
            );
            for (s, sol) in sols.iter().enumerate() {
                let want: Vec<usize> = (0..tasks.len()).filter(|&i| tasks[i].seg == s).collect();
                assert_eq!(sol, &want, "segment {s}: its chunks in chunk order");
            }
            let log = log.into_inner().unwrap();
            let at = |e: (u8, usize)| {
                let v: Vec<usize> = (0..log.len()).filter(|&j| log[j] == e).collect();
                assert_eq!(v.len(), 1, "{e:?} ran {} times", v.len());
                v[0]
            };
            let group = |seg: usize| groups.iter().position(|(r, _)| r.contains(&seg)).unwrap();
            for (i, t) in tasks.iter().enumerate() {
                assert!(
                    at((1, i)) < at((0, t.seg)),
                    "chunk {i}: pass 1 before the solve"
                );
                assert!(
                    at((0, t.seg)) < at((2, i)),
                    "chunk {i}: pass 2 after the solve"
                );
                // When pass 1 of chunk i started, no pass 2 of a group before the
                // previous one was still to come.
                let later2 = log[at((1, i))..]
                    .iter()
                    .filter(|e| e.0 == 2)
                    .map(|e| group(tasks[e.1].seg));
                for g in later2 {
                    assert!(group(t.seg) <= g + 1, "pass 1 of chunk {i} ran ahead");
                }
            }
            if threads == 1 {
                let order2: Vec<usize> = log.iter().filter(|e| e.0 == 2).map(|e| e.1).collect();
                assert_eq!(order2, plan.order2, "pass 2 in the groups' order");
                // The group of segment 4 runs backwards.
                let g4: Vec<usize> = order2
                    .iter()
                    .copied()
                    .filter(|&i| tasks[i].seg == 4)
                    .collect();
                assert!(g4.windows(2).all(|w| w[0] > w[1]), "{g4:?}");
            }
        }
    }
}
