//! Offline memory planning: buffers with live ranges -> arena offsets.
//!
//! Greedy by size, as TensorFlow Lite Micro's `GreedyMemoryPlanner`: place the
//! largest buffer first at the lowest offset that does not collide with any
//! already placed buffer whose live range intersects its own.

/// A buffer of the op program before planning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Buffer {
    /// Length in f32 elements.
    pub len: usize,
    /// First op that touches it.
    pub first: usize,
    /// Last op that touches it.
    pub last: usize,
}

/// Offsets (in elements) for each buffer, and the arena length in elements.
pub fn plan(buffers: &[Buffer]) -> (Vec<usize>, usize) {
    let mut order: Vec<usize> = (0..buffers.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(buffers[i].len), i));
    let mut offsets = vec![0usize; buffers.len()];
    let mut placed: Vec<usize> = Vec::new();
    let mut total = 0;
    for &i in &order {
        let b = &buffers[i];
        // Round every buffer start to 16 elements (64 bytes): cache lines and SIMD loads.
        let align = 16;
        let mut conflicts: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| buffers[j].first <= b.last && b.first <= buffers[j].last)
            .map(|&j| (offsets[j], offsets[j] + buffers[j].len))
            .collect();
        conflicts.sort_unstable();
        let mut at = 0;
        for (s, e) in conflicts {
            if at + b.len <= s {
                break;
            }
            at = at.max(e.div_ceil(align) * align);
        }
        offsets[i] = at;
        total = total.max(at + b.len);
        placed.push(i);
    }
    (offsets, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlap(a: (usize, usize), b: (usize, usize)) -> bool {
        a.0 < b.1 && b.0 < a.1
    }

    #[test]
    fn live_buffers_never_share_bytes_and_dead_ones_are_reused() {
        let bufs = vec![
            Buffer {
                len: 100,
                first: 0,
                last: 1,
            },
            Buffer {
                len: 50,
                first: 1,
                last: 2,
            },
            Buffer {
                len: 100,
                first: 2,
                last: 3,
            },
            Buffer {
                len: 10,
                first: 0,
                last: 3,
            },
        ];
        let (off, total) = plan(&bufs);
        for i in 0..bufs.len() {
            for j in 0..i {
                let live = bufs[i].first <= bufs[j].last && bufs[j].first <= bufs[i].last;
                if live {
                    assert!(
                        !overlap(
                            (off[i], off[i] + bufs[i].len),
                            (off[j], off[j] + bufs[j].len)
                        ),
                        "{i} {j}"
                    );
                }
            }
        }
        // Buffers 0 and 2 are never live together: the plan reuses the space.
        assert!(total < 100 + 50 + 100 + 10, "total {total}");
        assert_eq!(off[0], off[2]);
    }
}
