//! Checks of device buffers before a launch: the buffer's context, and overlap between an
//! output and the inputs (the kernels assume no aliasing: `__restrict__` and
//! non-coherent loads).

use crate::error::{invalid, Result};
use cudarc::driver::{CudaContext, CudaStream, DevicePtr, DeviceSlice};

/// `Err` unless `buf` belongs to `ctx`: a buffer of another context (another device) would
/// make a kernel read an invalid address — a sticky device fault instead of an `Err`.
pub(crate) fn check_buffer_context<T, B: DeviceSlice<T>>(
    ctx: &CudaContext,
    name: &'static str,
    buf: &B,
) -> Result<()> {
    let other = buf.stream().context();
    if other.cu_ctx() == ctx.cu_ctx() {
        Ok(())
    } else {
        Err(invalid(
            name,
            format!(
                "buffer belongs to the CUDA context of device {}, the backend runs on device {}",
                other.ordinal(),
                ctx.ordinal()
            ),
        ))
    }
}

/// A device buffer's byte range: `(first address, length in bytes)`.
pub(crate) type ByteRange = (u64, u64);

/// The byte range of `buf` (its address as seen on `stream`; in cudarc's multi-stream mode
/// this records a read event, which is harmless before a launch on the same stream).
pub(crate) fn byte_range<T, B: DevicePtr<T>>(buf: &B, stream: &CudaStream) -> ByteRange {
    let (p, _guard) = buf.device_ptr(stream);
    (p, (buf.len() * std::mem::size_of::<T>()) as u64)
}

/// Whether two non-empty byte ranges share a byte.
pub(crate) fn overlap(a: ByteRange, b: ByteRange) -> bool {
    a.1 > 0 && b.1 > 0 && a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
}

/// `Err` when the output `out` overlaps any of `inputs` (name, range). Distinct cudarc
/// allocations never overlap; two `ForeignSlice`s of one address (or of overlapping
/// ranges) do, and the kernels would then read values they already overwrote.
pub(crate) fn check_no_alias(
    out_name: &'static str,
    out: ByteRange,
    inputs: &[(&'static str, ByteRange)],
) -> Result<()> {
    for (name, r) in inputs {
        if overlap(out, *r) {
            return Err(invalid(
                out_name,
                format!(
                    "the output's device range {:#x}+{} bytes overlaps `{name}` ({:#x}+{} bytes); \
                     the kernels need distinct buffers",
                    out.0, out.1, r.0, r.1
                ),
            ));
        }
    }
    Ok(())
}

/// Tensor lists: `Err` when two destination tensors (`outs`, non-empty ones compared) share
/// a byte, or a destination overlaps any input. Sorted, so O((outs + inputs) log outs) for
/// a model's hundreds of tensors.
pub(crate) fn check_list_alias(
    out_name: &'static str,
    outs: &[ByteRange],
    inputs: &[(&'static str, ByteRange)],
) -> Result<()> {
    let mut sorted: Vec<ByteRange> = outs.iter().copied().filter(|r| r.1 > 0).collect();
    sorted.sort_unstable();
    for w in sorted.windows(2) {
        if overlap(w[0], w[1]) {
            return Err(invalid(
                out_name,
                format!(
                    "two destination tensors overlap ({:#x}+{} and {:#x}+{} bytes); each \
                     needs its own memory",
                    w[0].0, w[0].1, w[1].0, w[1].1
                ),
            ));
        }
    }
    // The destinations are disjoint and sorted: only the last one starting before an
    // input's end can reach into it.
    for (name, r) in inputs {
        let end = r.0.saturating_add(r.1);
        let i = sorted.partition_point(|o| o.0 < end);
        if i > 0 {
            check_no_alias(out_name, sorted[i - 1], &[(name, *r)])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::overlap;

    #[test]
    fn overlap_is_on_bytes_and_ignores_empty_ranges() {
        assert!(overlap((100, 8), (104, 8)));
        assert!(overlap((100, 8), (100, 8)));
        assert!(
            !overlap((100, 8), (108, 8)),
            "adjacent ranges do not overlap"
        );
        assert!(
            !overlap((100, 0), (100, 8)),
            "an empty range overlaps nothing"
        );
        assert!(overlap((0, u64::MAX), (u64::MAX - 1, 1)));
    }
}
