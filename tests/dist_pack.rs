//! Pure logic of the distributed path, checked against hand-computed values: the sums and
//! counts of a stats run, their means after a simulated sum over ranks, and the exact
//! agreement header.

use redreg::dist::{agree, check_same_len, AllReduce};
use redreg::stats::{CpuStats, ReducibleStats, StatHandle, Stats, StatsPlan};
use redreg::{DType, Segments};

/// A "group" of one rank whose sum adds fixed contributions of other simulated ranks.
struct Simulated(Vec<Vec<f64>>);

impl AllReduce for Simulated {
    fn all_reduce_sum(&self, buf: &mut [f64]) -> redreg::Result<()> {
        for other in &self.0 {
            assert_eq!(other.len(), buf.len());
            buf.iter_mut().zip(other).for_each(|(a, b)| *a += b);
        }
        Ok(())
    }
}

#[test]
fn sums_and_counts_layout_and_means() {
    let segs = Segments::from_lengths(&[2, 0, 1]).unwrap();
    let mut plan = StatsPlan::new();
    let sq = plan.sq_diff_mean("sq", DType::F32, 1, 4).unwrap();
    let cos = plan.row_cos_mean("cos", DType::F32, 2, 2).unwrap();
    let p = plan.true_prob_mean("p", DType::F32, 2, 2).unwrap();
    let ss = plan.seg_sums("ss", DType::F32, &segs, false).unwrap();
    let dots = plan.seg_dots("dots", DType::F32, &segs).unwrap();
    let mut exec = CpuStats::new(&plan).unwrap();
    let g = 3f32.ln();
    exec.run(&mut [
        sq.bind((&[1f32, 2.0, 3.0, 4.0], &[1f32, 2.0, 3.0, 6.0])),
        cos.bind((&[1f32, 0.0, 0.0, 1.0], &[1f32, 0.0, 1.0, 0.0])),
        p.bind((&[g, 0.0, 0.0, g], &[0i64, 1])),
        ss.bind(&[1f32, -2.0, 3.0]),
        dots.bind((&[1f32, 2.0, 3.0], &[2f32, 2.0, 2.0])),
    ])
    .unwrap();
    let s = exec.results().to_sums(&plan).unwrap();
    // [sum, count] sq, [sum, count] cos, [sum, rows, faults] p, 3·3 seg sums, 3 dots.
    let want = [
        4.0, 4.0, 1.0, 2.0, 1.5, 2.0, 0.0, -1.0, 0.0, 3.0, 5.0, 0.0, 9.0, 3.0, 0.0, 3.0, 6.0, 0.0,
        6.0,
    ];
    assert_eq!(s.len(), want.len());
    for (i, (a, b)) in s.as_slice().iter().zip(want).enumerate() {
        // The probability sum goes through f32 logits (ln 3 rounded): 1e-7.
        assert!((a - b).abs() < 1e-7, "value {i}: {a} vs {b}");
    }
    // A second simulated rank with 4 more squared differences summing to 12 (mean 3),
    // 2 more rows of cosines summing to 0, 2 more probability rows summing to 0.5.
    let mut other = vec![0.0; want.len()];
    other[..7].copy_from_slice(&[12.0, 4.0, 0.0, 2.0, 0.5, 2.0, 0.0]);
    let mut s2 = s.clone();
    Simulated(vec![other])
        .all_reduce_sum(s2.as_mut_slice())
        .unwrap();
    let m = s2.means().unwrap();
    assert!((m.get(sq).unwrap() - 16.0 / 8.0).abs() < 1e-12);
    assert!((m.get(cos).unwrap() - 1.0 / 4.0).abs() < 1e-12);
    assert!((m.get(p).unwrap() - 2.0 / 4.0).abs() < 1e-7);
    assert_eq!(m.get(dots).unwrap(), &[6.0, 0.0, 6.0]);
    assert_eq!(m.get(ss).unwrap().sum_sq, &[5.0, 0.0, 9.0]);
}

#[test]
fn label_faults_are_flags_and_empty_shards_count_zero() {
    let mut plan = StatsPlan::new();
    let p = plan.true_prob_mean("p", DType::F32, 2, 2).unwrap();
    let e = plan.sq_diff_mean("empty", DType::F32, 1, 0).unwrap();
    let mut exec = CpuStats::new(&plan).unwrap();
    let r = exec.run(&mut [
        p.bind((&[0f32; 4], &[0i64, 5])),
        e.bind((&[0f32; 0], &[0f32; 0])),
    ]);
    assert!(r.is_err());
    let s = exec.results().to_sums(&plan).unwrap();
    assert!(s.as_slice()[0].is_nan());
    assert_eq!(&s.as_slice()[1..], &[2.0, 1.0, 0.0, 0.0]);
    // Summed with a clean rank: still a fault, named, and the other mean survives.
    let mut s2 = s.clone();
    Simulated(vec![vec![1.0, 2.0, 0.0, 6.0, 3.0]])
        .all_reduce_sum(s2.as_mut_slice())
        .unwrap();
    let mut out = plan.new_results();
    let err = s2.means_into(&mut out).unwrap_err().to_string();
    assert!(err.contains("`p` on 1 rank"), "{err}");
    assert!(out.get(p).unwrap().is_nan());
    assert_eq!(out.get(e).unwrap(), 2.0);
    // Results of another plan are refused.
    let other = StatsPlan::new();
    assert!(ReducibleStats::new(&other).fill(exec.results()).is_err());
    assert!(s.means_into(&mut other.new_results()).is_err());
}

#[test]
fn agreement_header_is_exact() {
    // Equal values on 3 simulated ranks agree; one limb off by one does not.
    let enc = |x: u64| -> Vec<f64> {
        let mut v = vec![1.0];
        for i in 0..4 {
            let l = ((x >> (16 * i)) & 0xffff) as f64;
            v.extend([l, l * l]);
        }
        v
    };
    let x = u64::MAX - 12345;
    assert!(agree(&Simulated(vec![enc(x), enc(x)]), &[x]).unwrap());
    assert!(!agree(&Simulated(vec![enc(x), enc(x - 1)]), &[x]).unwrap());
    assert!(!agree(&Simulated(vec![enc(x ^ (1 << 63))]), &[x]).unwrap());
    // Lengths that average to this rank's length but differ still fail.
    assert!(check_same_len(&Simulated(vec![enc(9), enc(11)]), 10).is_err());
    assert!(check_same_len(&Simulated(vec![enc(10), enc(10)]), 10).is_ok());
    // An engine that does not sum is detected.
    struct Broken;
    impl AllReduce for Broken {
        fn all_reduce_sum(&self, buf: &mut [f64]) -> redreg::Result<()> {
            buf.iter_mut().for_each(|x| *x = 0.0);
            Ok(())
        }
    }
    assert!(check_same_len(&Broken, 3).is_err());
}
