//! The ragged batch: L parameter tensors of a model flattened into one buffer.
//!
//! A [`Segments`] is built once per model layout and reused every step. Segment `s` covers
//! the half-open element range `offsets[s]..offsets[s + 1]` of every buffer that is passed
//! with it. Empty segments are allowed (a tensor with no elements, or a layer a shard does
//! not hold).

use crate::error::{Error, Result};
use std::ops::Range;

/// Offsets of L segments in a flat buffer; `offsets.len() == L + 1`, `offsets[0] == 0`,
/// non-decreasing, and `offsets[L]` is the total element count.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "Vec<usize>", into = "Vec<usize>")]
pub struct Segments {
    offsets: Vec<usize>,
}

impl Segments {
    /// Segments of the given lengths, laid out back to back from element 0.
    ///
    /// `Err` if the lengths add up to more than `usize::MAX`.
    pub fn from_lengths(lengths: &[usize]) -> Result<Self> {
        let mut offsets = Vec::with_capacity(lengths.len() + 1);
        let mut acc: usize = 0;
        offsets.push(0);
        for (i, &n) in lengths.iter().enumerate() {
            acc = acc.checked_add(n).ok_or_else(|| {
                Error::InvalidSegments(format!(
                    "lengths overflow usize at segment {i}: {acc} + {n}"
                ))
            })?;
            offsets.push(acc);
        }
        Ok(Self { offsets })
    }

    /// Segments from L + 1 offsets: `offsets[0]` must be 0 and the offsets non-decreasing.
    pub fn from_offsets(offsets: Vec<usize>) -> Result<Self> {
        if offsets.is_empty() {
            return Err(Error::InvalidSegments(
                "offsets must hold at least one value (the leading 0)".into(),
            ));
        }
        if offsets[0] != 0 {
            return Err(Error::InvalidSegments(format!(
                "offsets[0] must be 0, got {}",
                offsets[0]
            )));
        }
        if let Some(i) = offsets.windows(2).position(|w| w[1] < w[0]) {
            return Err(Error::InvalidSegments(format!(
                "offsets must be non-decreasing: offsets[{}] = {} > offsets[{}] = {}",
                i,
                offsets[i],
                i + 1,
                offsets[i + 1]
            )));
        }
        Ok(Self { offsets })
    }

    /// Shapes of tensors (for example a model's parameter shapes) to segments of their
    /// element counts. `Err` if a shape's product overflows.
    pub fn from_shapes<S: AsRef<[usize]>>(shapes: &[S]) -> Result<Self> {
        let mut lengths = Vec::with_capacity(shapes.len());
        for (i, s) in shapes.iter().enumerate() {
            let n = s
                .as_ref()
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| {
                    Error::InvalidSegments(format!(
                        "shape {i} {:?}: element count overflows usize",
                        s.as_ref()
                    ))
                })?;
            lengths.push(n);
        }
        Self::from_lengths(&lengths)
    }

    /// Number of segments L.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// True when there are no segments.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total number of elements covered (`offsets[L]`).
    pub fn total(&self) -> usize {
        *self.offsets.last().expect("offsets is never empty")
    }

    /// The L + 1 offsets.
    pub fn offsets(&self) -> &[usize] {
        &self.offsets
    }

    /// Element range of segment `s`. Panics if `s >= len()`: use [`Segments::get`] for a
    /// checked lookup.
    pub fn range(&self, s: usize) -> Range<usize> {
        self.offsets[s]..self.offsets[s + 1]
    }

    /// Element range of segment `s`, or `None` when out of range.
    pub fn get(&self, s: usize) -> Option<Range<usize>> {
        (s < self.len()).then(|| self.range(s))
    }

    /// Length of segment `s` (panics like [`Segments::range`]).
    pub fn seg_len(&self, s: usize) -> usize {
        self.offsets[s + 1] - self.offsets[s]
    }

    /// Iterator over all segment ranges.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Range<usize>> + '_ {
        self.offsets.windows(2).map(|w| w[0]..w[1])
    }

    /// Length of the longest segment (0 when there are none).
    pub fn max_len(&self) -> usize {
        self.iter().map(|r| r.len()).max().unwrap_or(0)
    }

    /// `Err` unless a buffer named `name` of `len` elements is exactly covered.
    pub fn check_buffer(&self, name: &'static str, len: usize) -> Result<()> {
        crate::error::check_len(name, self.total(), len)
    }
}

impl TryFrom<Vec<usize>> for Segments {
    type Error = Error;
    fn try_from(offsets: Vec<usize>) -> Result<Self> {
        Self::from_offsets(offsets)
    }
}

impl From<Segments> for Vec<usize> {
    fn from(s: Segments) -> Self {
        s.offsets
    }
}

pub(crate) use chunks::{chunk_tasks, ChunkTask};

/// The chunk table: crate-internal (both backends parallelise over it); public only
/// through [`crate::testing`], for tests that check the chunking itself.
pub(crate) mod chunks {
    use super::Segments;
    use crate::error::Result;

    /// One fixed-size piece of one segment: the unit of parallel work on the CPU and of a
    /// thread block on the GPU. Built once per [`Segments`] by [`chunk_tasks`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct ChunkTask {
        /// Segment index.
        pub seg: usize,
        /// First element (absolute offset in the flat buffer).
        pub start: usize,
        /// One past the last element (absolute).
        pub end: usize,
    }

    /// Splits every non-empty segment into chunks of at most `chunk` elements, in segment
    /// order and, within a segment, in element order. Empty segments get no chunk.
    ///
    /// The table depends only on the layout and `chunk`, never on the thread count, which is
    /// what makes reductions over it deterministic.
    pub fn chunk_tasks(segs: &Segments, chunk: usize) -> Result<Vec<ChunkTask>> {
        if chunk == 0 {
            return Err(crate::error::invalid("chunk", "chunk size must be > 0"));
        }
        let mut tasks = Vec::new();
        for (seg, r) in segs.iter().enumerate() {
            let mut start = r.start;
            while start < r.end {
                let end = start + (r.end - start).min(chunk);
                tasks.push(ChunkTask { seg, start, end });
                start = end;
            }
        }
        Ok(tasks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_and_offsets_agree() {
        let s = Segments::from_lengths(&[3, 0, 5]).unwrap();
        assert_eq!(s.offsets(), &[0, 3, 3, 8]);
        assert_eq!(s.len(), 3);
        assert_eq!(s.total(), 8);
        assert_eq!(s.range(1), 3..3);
        assert_eq!(Segments::from_offsets(vec![0, 3, 3, 8]).unwrap(), s);
    }

    #[test]
    fn bad_offsets_are_errors_with_numbers() {
        let e = Segments::from_offsets(vec![0, 5, 4])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("offsets[1] = 5") && e.contains("offsets[2] = 4"),
            "{e}"
        );
        assert!(Segments::from_offsets(vec![1, 2]).is_err());
        assert!(Segments::from_offsets(vec![]).is_err());
        let e = Segments::from_lengths(&[usize::MAX, 1])
            .unwrap_err()
            .to_string();
        assert!(e.contains("overflow"), "{e}");
        assert!(Segments::from_shapes(&[vec![usize::MAX, 2]]).is_err());
    }

    #[test]
    fn buffer_coverage_is_checked() {
        let s = Segments::from_lengths(&[2, 2]).unwrap();
        assert!(s.check_buffer("v", 4).is_ok());
        let e = s.check_buffer("v", 5).unwrap_err().to_string();
        assert!(e.contains("expected 4") && e.contains("got 5"), "{e}");
    }

    #[test]
    fn chunk_table_covers_each_segment_in_order() {
        let s = Segments::from_lengths(&[5, 0, 1, 8]).unwrap();
        let t = chunk_tasks(&s, 4).unwrap();
        let got: Vec<_> = t.iter().map(|c| (c.seg, c.start, c.end)).collect();
        assert_eq!(
            got,
            vec![(0, 0, 4), (0, 4, 5), (2, 5, 6), (3, 6, 10), (3, 10, 14)]
        );
        assert!(chunk_tasks(&s, 0).is_err());
    }

    /// Totals above 2^31 (and 2^32) elements: offsets and the chunk table are plain usize
    /// arithmetic, checked here without allocating any buffer.
    #[test]
    fn huge_layouts_index_in_64_bits() {
        let big = (1usize << 32) + 5;
        let s = Segments::from_lengths(&[3, big, 1 << 31]).unwrap();
        assert_eq!(s.total(), 3 + big + (1 << 31));
        let t = chunk_tasks(&s, 1 << 30).unwrap();
        assert_eq!(t.len(), 1 + 5 + 2);
        assert_eq!(t[1].start, 3);
        assert_eq!(t[5].end, 3 + big);
        assert_eq!(t.last().unwrap().end, s.total());
        assert!(t.windows(2).all(|w| w[0].end == w[1].start));
    }

    #[test]
    fn serde_round_trip_validates() {
        let s = Segments::from_lengths(&[1, 2]).unwrap();
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(j, "[0,1,3]");
        assert_eq!(serde_json::from_str::<Segments>(&j).unwrap(), s);
        assert!(serde_json::from_str::<Segments>("[0,3,1]").is_err());
    }
}
