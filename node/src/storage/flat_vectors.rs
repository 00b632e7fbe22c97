//! A vector space's vectors in one flat array, beside its usearch graph, for the searches that
//! want a large share of the space: a free-text leaf asks for up to 10,000 of a shard's ~32,000
//! scenes at 2,000 hours. usearch's exact search keeps its results in a sorted buffer of k
//! that shifts on every insert (memmove was 18% of a hybrid query); a scan here measures every
//! vector once, drops those below the leaf's floor, and selects the k nearest in linear time.
//!
//! The copy holds each vector as usearch returns it (after its quantization), so a scan ranks
//! what the index itself would. It is filled as vectors are added, and at open from the keys
//! the store knows; until it holds exactly what the index holds it is not used.

use std::collections::HashMap;

use crate::storage::index::VectorMetric;

#[derive(Debug)]
pub struct FlatVectors {
    dimensions: usize,
    metric: VectorMetric,
    keys: Vec<u64>,
    /// `keys.len() * dimensions` values, vector `i` at `i * dimensions`.
    values: Vec<f32>,
    /// For cosine: 1 / |v| (0 for a zero vector), so a scan computes one dot product a vector.
    inverse_norms: Vec<f32>,
    positions: HashMap<u64, usize>,
}

impl FlatVectors {
    pub fn new(dimensions: usize, metric: VectorMetric) -> FlatVectors {
        FlatVectors { dimensions, metric, keys: Vec::new(), values: Vec::new(), inverse_norms: Vec::new(), positions: HashMap::new() }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn contains(&self, key: u64) -> bool {
        self.positions.contains_key(&key)
    }

    /// Adds or replaces `key`'s vector; one of another length is ignored (the index refuses it).
    pub fn insert(&mut self, key: u64, vector: &[f32]) {
        if vector.len() != self.dimensions {
            return;
        }
        let inverse_norm = inverse_norm(vector);
        match self.positions.get(&key) {
            Some(&at) => {
                self.values[at * self.dimensions..(at + 1) * self.dimensions].copy_from_slice(vector);
                self.inverse_norms[at] = inverse_norm;
            }
            None => {
                self.positions.insert(key, self.keys.len());
                self.keys.push(key);
                self.values.extend_from_slice(vector);
                self.inverse_norms.push(inverse_norm);
            }
        }
    }

    /// Removes `key` by moving the last vector into its place.
    pub fn remove(&mut self, key: u64) {
        let Some(at) = self.positions.remove(&key) else { return };
        let last = self.keys.len() - 1;
        if at != last {
            let moved = self.keys[last];
            self.keys[at] = moved;
            self.inverse_norms[at] = self.inverse_norms[last];
            self.values.copy_within(last * self.dimensions..(last + 1) * self.dimensions, at * self.dimensions);
            self.positions.insert(moved, at);
        }
        self.keys.truncate(last);
        self.inverse_norms.truncate(last);
        self.values.truncate(last * self.dimensions);
    }

    pub fn clear(&mut self) {
        self.keys = Vec::new();
        self.values = Vec::new();
        self.inverse_norms = Vec::new();
        self.positions = HashMap::new();
    }

    /// The `k` nearest vectors to `query` whose distance is at most `max_distance`, as (key,
    /// distance) nearest first (ties by key), in usearch's distances: 1 - cos for cosine, 1 - a.b
    /// for inner product, the squared distance for l2.
    pub fn nearest(&self, query: &[f32], k: usize, max_distance: f32) -> Vec<(u64, f32)> {
        if query.len() != self.dimensions || k == 0 || self.dimensions == 0 {
            return Vec::new();
        }
        let query_inverse_norm = inverse_norm(query);
        let mut found: Vec<(u64, f32)> = Vec::new();
        for (at, vector) in self.values.chunks_exact(self.dimensions).enumerate() {
            let distance = match self.metric {
                VectorMetric::Cosine => {
                    let (a, b) = (query_inverse_norm, self.inverse_norms[at]);
                    match (a == 0.0, b == 0.0) {
                        (true, true) => 0.0,
                        (true, false) | (false, true) => 1.0,
                        (false, false) => (1.0 - dot(query, vector) * a * b).max(0.0),
                    }
                }
                VectorMetric::InnerProduct => 1.0 - dot(query, vector),
                VectorMetric::L2 => squared_distance(query, vector),
            };
            if distance <= max_distance {
                found.push((self.keys[at], distance));
            }
        }
        let nearer = |a: &(u64, f32), b: &(u64, f32)| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0));
        if found.len() > k {
            found.select_nth_unstable_by(k - 1, nearer);
            found.truncate(k);
        }
        found.sort_unstable_by(nearer);
        found
    }
}

fn inverse_norm(vector: &[f32]) -> f32 {
    let norm = dot(vector, vector).sqrt();
    if norm > 0.0 && norm.is_finite() {
        1.0 / norm
    } else {
        0.0
    }
}

/// The sum of `term` over both slices' elements, in eight independent sums, so the compiler
/// keeps them in vector registers.
#[inline(always)]
fn sum_of_terms(a: &[f32], b: &[f32], term: impl Fn(f32, f32) -> f32) -> f32 {
    let mut sums = [0.0f32; 8];
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let (a_rest, b_rest) = (a_chunks.remainder(), b_chunks.remainder());
    for (x, y) in a_chunks.zip(b_chunks) {
        for lane in 0..8 {
            sums[lane] += term(x[lane], y[lane]);
        }
    }
    let mut total: f32 = sums.iter().sum();
    for (x, y) in a_rest.iter().zip(b_rest) {
        total += term(*x, *y);
    }
    total
}

#[inline(always)]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    sum_of_terms(a, b, |x, y| x * y)
}

#[inline(always)]
fn squared_distance_portable(a: &[f32], b: &[f32]) -> f32 {
    sum_of_terms(a, b, |x, y| (x - y) * (x - y))
}

// The build targets baseline x86-64 (SSE2); where the CPU has AVX2 the same loops compiled
// for it run about twice as wide. Both give the same sums in the same order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn squared_distance_avx2(a: &[f32], b: &[f32]) -> f32 {
    squared_distance_portable(a, b)
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU was just checked to support AVX2.
        return unsafe { dot_avx2(a, b) };
    }
    dot_portable(a, b)
}

fn squared_distance(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU was just checked to support AVX2.
        return unsafe { squared_distance_avx2(a, b) };
    }
    squared_distance_portable(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine_distance(a: &[f32], b: &[f32]) -> f32 {
        let (ab, aa, bb): (f64, f64, f64) = a.iter().zip(b).fold((0.0, 0.0, 0.0), |(ab, aa, bb), (x, y)| {
            let (x, y) = (f64::from(*x), f64::from(*y));
            (ab + x * y, aa + x * x, bb + y * y)
        });
        (1.0 - ab / (aa.sqrt() * bb.sqrt())) as f32
    }

    fn vectors(count: usize, dimensions: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut state = seed;
        (0..count)
            .map(|_| {
                (0..dimensions)
                    .map(|_| {
                        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn nearest_ranks_every_vector_as_a_full_sort_would_and_keeps_only_those_within_the_distance() {
        let dimensions = 37; // not a multiple of 8: the remainder counts too
        let stored = vectors(500, dimensions, 7);
        let mut flat = FlatVectors::new(dimensions, VectorMetric::Cosine);
        for (key, vector) in stored.iter().enumerate() {
            flat.insert(key as u64, vector);
        }
        let query = &vectors(1, dimensions, 99)[0];
        let mut expected: Vec<(u64, f32)> = stored.iter().enumerate().map(|(key, v)| (key as u64, cosine_distance(query, v))).collect();
        expected.sort_by(|a, b| a.1.total_cmp(&b.1));
        let found = flat.nearest(query, 50, f32::INFINITY);
        assert_eq!(found.len(), 50);
        for (got, want) in found.iter().zip(&expected) {
            assert!((got.1 - want.1).abs() < 1e-5, "{got:?} vs {want:?}");
        }
        assert!(found.windows(2).all(|w| w[0].1 <= w[1].1), "nearest first");
        // A distance bound keeps exactly the vectors within it, however many k allows.
        let bound = expected[120].1;
        let within = flat.nearest(query, 10_000, bound);
        assert!(within.iter().all(|h| h.1 <= bound));
        let want = expected.iter().filter(|h| h.1 <= bound - 1e-5).count();
        assert!(within.len() >= want && within.len() <= 125, "{} within {bound}, expected about {want}", within.len());
    }

    #[test]
    fn removing_and_replacing_keys_keeps_every_other_vector_where_its_key_says() {
        let stored = vectors(20, 8, 3);
        let mut flat = FlatVectors::new(8, VectorMetric::L2);
        for (key, vector) in stored.iter().enumerate() {
            flat.insert(key as u64, vector);
        }
        flat.remove(0);
        flat.remove(7);
        flat.remove(19);
        flat.remove(42);
        flat.insert(3, &stored[5]);
        assert_eq!(flat.len(), 17);
        for (key, vector) in stored.iter().enumerate() {
            let found = flat.nearest(vector, 1, 0.0);
            match key {
                0 | 7 | 19 => assert!(found.is_empty(), "{key} was removed"),
                // Key 3 now holds vector 5: both are at distance 0; the smaller key first.
                5 => assert_eq!(found, vec![(3, 0.0)]),
                3 => assert!(found.is_empty(), "key 3's old vector was replaced"),
                _ => assert_eq!(found, vec![(key as u64, 0.0)]),
            }
        }
        flat.insert(9, &[1.0; 3]); // wrong length: ignored
        assert_eq!(flat.len(), 17);
        flat.clear();
        assert!(flat.is_empty() && flat.nearest(&stored[1], 5, f32::INFINITY).is_empty());
    }

    #[test]
    fn distances_follow_each_metric_and_zero_vectors() {
        let mut flat = FlatVectors::new(2, VectorMetric::InnerProduct);
        flat.insert(1, &[1.0, 2.0]);
        assert_eq!(flat.nearest(&[3.0, 4.0], 1, f32::INFINITY), vec![(1, 1.0 - 11.0)]);
        let mut flat = FlatVectors::new(2, VectorMetric::L2);
        flat.insert(1, &[1.0, 2.0]);
        assert_eq!(flat.nearest(&[3.0, 4.0], 1, f32::INFINITY), vec![(1, 8.0)]);
        let mut flat = FlatVectors::new(2, VectorMetric::Cosine);
        flat.insert(1, &[0.0, 0.0]);
        flat.insert(2, &[2.0, 0.0]);
        assert_eq!(flat.nearest(&[1.0, 0.0], 2, f32::INFINITY), vec![(2, 0.0), (1, 1.0)]);
        assert_eq!(flat.nearest(&[0.0, 0.0], 2, f32::INFINITY), vec![(1, 0.0), (2, 1.0)]);
    }
}
