//! The memory planner: places every intermediate buffer in one arena so that
//! buffers whose lifetimes overlap never overlap in memory, and buffers that
//! are never alive together share bytes.
//!
//! Placement is greedy by size (largest first), each buffer at the lowest
//! 64-byte-aligned offset that does not collide with an already placed
//! buffer alive at the same time. This is the classic offline heuristic for
//! the (NP-hard) problem; for transformer graphs it lands close to the peak
//! live size.

/// Alignment of every buffer: a cache line, which also suits any SIMD load.
pub(crate) const ALIGN: usize = 64;

/// Places buffers given as `(bytes, first step, last step)`, both steps
/// inclusive. Returns each buffer's offset and the arena size.
pub(crate) fn pack(buffers: &[(usize, usize, usize)]) -> (Vec<usize>, usize) {
    let mut order: Vec<usize> = (0..buffers.len()).collect();
    order.sort_by(|&a, &b| buffers[b].0.cmp(&buffers[a].0).then(a.cmp(&b)));
    let mut offsets = vec![0usize; buffers.len()];
    // Placed buffers as (offset, end, first, last).
    let mut placed: Vec<(usize, usize, usize, usize)> = Vec::new();
    let mut total = 0usize;
    for i in order {
        let (size, first, last) = buffers[i];
        let size = size.div_ceil(ALIGN).max(1) * ALIGN;
        let mut busy: Vec<(usize, usize)> =
            placed.iter().filter(|p| p.2 <= last && first <= p.3).map(|p| (p.0, p.1)).collect();
        busy.sort();
        let mut offset = 0usize;
        for (s, e) in busy {
            if offset + size <= s {
                break;
            }
            offset = offset.max(e);
        }
        offsets[i] = offset;
        placed.push((offset, offset + size, first, last));
        total = total.max(offset + size);
    }
    (offsets, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlaps(a: (usize, usize, usize, usize), b: (usize, usize, usize, usize)) -> bool {
        a.0 < b.1 && b.0 < a.1 && a.2 <= b.3 && b.2 <= a.3
    }

    #[test]
    fn disjoint_lifetimes_share_memory() {
        let (off, total) = pack(&[(1000, 0, 1), (1000, 2, 3), (1000, 4, 5)]);
        assert_eq!(off, vec![0, 0, 0]);
        assert_eq!(total, 1024);
    }

    #[test]
    fn live_buffers_never_collide() {
        // A chain where each value is read by the next two steps.
        let bufs: Vec<(usize, usize, usize)> = (0..40).map(|i| (100 + (i * 37) % 500, i, i + 2)).collect();
        let (off, total) = pack(&bufs);
        let placed: Vec<_> =
            bufs.iter().zip(&off).map(|(b, &o)| (o, o + b.0.div_ceil(ALIGN) * ALIGN, b.1, b.2)).collect();
        for i in 0..placed.len() {
            assert_eq!(placed[i].0 % ALIGN, 0);
            assert!(placed[i].1 <= total);
            for j in 0..i {
                assert!(!overlaps(placed[i], placed[j]), "{i} and {j} collide");
            }
        }
        // Three buffers of at most 576 bytes are alive at once.
        assert!(total <= 3 * 576 + 2 * ALIGN, "arena of {total} bytes is too large");
    }
}
