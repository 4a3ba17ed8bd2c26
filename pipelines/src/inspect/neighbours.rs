//! Exact nearest neighbours in the audit's embedding: our GEMM over tiles of queries x
//! queries, then a scan keeping two short lists per query: the nearest examples of any
//! split (near-duplicate candidates) and, for a training query, the nearest training
//! examples of *other folds* (the out-of-fold vote of confident learning).
//!
//! Rows are ordered training split first. A training query is compared with training
//! rows only (its pairs with val/test rows are found from the other side); a val/test
//! query with every row. Reported distances are recomputed in f64 in a fixed order, so
//! they do not depend on how the matrix product was blocked or threaded.

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::kernels::gemm::{gemm, MatRef, Scratch, Start};

/// One neighbour: its row and its Euclidean distance in the embedding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbour {
    pub row: u32,
    pub distance: f64,
}

/// What to look for.
#[derive(Debug, Clone, Copy)]
pub struct Search<'a> {
    /// Rows `0..n_train` are the training split.
    pub n_train: usize,
    /// Fold of each training row; a vote neighbour must be in another fold.
    pub fold: &'a [u8],
    /// Vote neighbours per training query.
    pub k_vote: usize,
    /// Nearest rows of any split per query.
    pub k_any: usize,
}

#[derive(Debug, Default)]
pub struct Found {
    /// Per training row: its nearest other-fold training rows, nearest first.
    pub votes: Vec<Vec<Neighbour>>,
    /// Per row: its nearest rows (training rows only for a training query), nearest first.
    pub nearest: Vec<Vec<Neighbour>>,
}

/// A sorted list of the `capacity` smallest `(key, row)` seen.
struct Best {
    capacity: usize,
    items: Vec<(f32, u32)>,
}

impl Best {
    fn new(capacity: usize) -> Best {
        Best { capacity, items: Vec::with_capacity(capacity + 1) }
    }

    #[inline]
    fn bound(&self) -> f32 {
        if self.capacity == 0 {
            f32::NEG_INFINITY
        } else if self.items.len() < self.capacity {
            f32::INFINITY
        } else {
            self.items[self.capacity - 1].0
        }
    }

    #[inline]
    fn offer(&mut self, key: f32, row: u32) {
        if self.capacity == 0 {
            return;
        }
        let at = self.items.partition_point(|&(k, r)| (k, r) < (key, row));
        if at < self.capacity {
            self.items.insert(at, (key, row));
            self.items.truncate(self.capacity);
        }
    }
}

/// Queries per task: the rows of `A` in one product (a multiple of the GEMM's row
/// block, so each column tile of `B` is packed once per 384 queries).
const QUERIES: usize = 384;
/// Columns per tile: a `QUERIES x COLUMNS` tile of dot products stays in cache while
/// it is scanned, instead of a `QUERIES x n` matrix going through memory.
const COLUMNS: usize = 512;

/// One query's running lists: (vote, any split).
struct Lists {
    vote: Best,
    any: Best,
}

/// Offers query `query` the columns `col0..col0 + dots.len()` of its row of dot
/// products.
fn scan(query: usize, col0: usize, dots: &[f32], squared: &[f32], search: &Search<'_>, lists: &mut Lists) {
    let is_train = query < search.n_train;
    let own_fold = if is_train { search.fold[query] } else { u8::MAX };
    let (mut any_bound, mut vote_bound) = (lists.any.bound(), lists.vote.bound());
    let squared = &squared[col0..col0 + dots.len()];
    for (chunk, (dots, squared)) in dots.chunks(SKIP_CHUNK).zip(squared.chunks(SKIP_CHUNK)).enumerate() {
        // Most of a row beats neither list: a chunk whose smallest key does not is
        // passed over in one vectorised pass (the same keys as below, so the same lists).
        let smallest = dots.iter().zip(squared).fold(f32::INFINITY, |min, (dot, sq)| min.min(sq - 2.0 * dot));
        if smallest >= any_bound.max(vote_bound) {
            continue;
        }
        for (offset, (dot, sq)) in dots.iter().zip(squared).enumerate() {
            let key = sq - 2.0 * dot;
            let j = col0 + chunk * SKIP_CHUNK + offset;
            if key >= any_bound && key >= vote_bound || j == query {
                continue;
            }
            if key < any_bound {
                lists.any.offer(key, j as u32);
                any_bound = lists.any.bound();
            }
            if is_train && key < vote_bound && search.fold[j] != own_fold {
                lists.vote.offer(key, j as u32);
                vote_bound = lists.vote.bound();
            }
        }
    }
}

/// Columns of a row of dot products checked at once against both lists' bounds.
const SKIP_CHUNK: usize = 32;

/// Searches `embedding` (n rows, training split first) as `search` says.
///
/// Dot products come from our GEMM ([`crate::kernels::gemm`]: each one a single
/// FMA chain in a fixed order), so the lists are the same for any thread count.
pub fn search(embedding: &Tensor, search: &Search<'_>) -> Result<Found, candle_core::Error> {
    let (n, dims) = embedding.dims2()?;
    let values = embedding.flatten_all()?.to_vec1::<f32>()?;
    let squared: Vec<f32> = values.chunks(dims.max(1)).map(|row| row.iter().map(|v| v * v).sum()).collect();
    // The embedding transposed (`dims x n`, row-major): tiles of `B` are contiguous rows.
    let mut columns = vec![0f32; n * dims];
    for (row, values) in values.chunks(dims.max(1)).enumerate() {
        for (l, &value) in values.iter().enumerate() {
            columns[l * n + row] = value;
        }
    }
    let exact = |a: usize, b: usize| -> f64 {
        let (x, y) = (&values[a * dims..(a + 1) * dims], &values[b * dims..(b + 1) * dims]);
        x.iter().zip(y).map(|(p, q)| (*p as f64 - *q as f64).powi(2)).sum::<f64>().sqrt()
    };
    let finish = |best: &Best, query: usize| -> Vec<Neighbour> {
        let mut list: Vec<Neighbour> =
            best.items.iter().map(|&(_, row)| Neighbour { row, distance: exact(query, row as usize) }).collect();
        list.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.row.cmp(&b.row)));
        list
    };
    // Blocks never straddle the end of the training split: a training query is
    // compared with training rows only, a val/test query with every row.
    let mut blocks = Vec::new();
    let mut start = 0;
    while start < n {
        let end = if start < search.n_train { (start + QUERIES).min(search.n_train) } else { (start + QUERIES).min(n) };
        blocks.push(start..end);
        start = end;
    }
    // Blocks are independent and collected in order: the same lists on any pool size.
    let per_block: Vec<Vec<(Vec<Neighbour>, Vec<Neighbour>)>> = blocks
        .into_par_iter()
        .map_init(
            || (Scratch::default(), vec![0f32; QUERIES * COLUMNS]),
            |(scratch, tile), rows| {
                let width = if rows.start < search.n_train { search.n_train } else { n };
                let mut lists: Vec<Lists> = rows
                    .clone()
                    .map(|query| Lists {
                        vote: Best::new(if query < search.n_train { search.k_vote } else { 0 }),
                        any: Best::new(search.k_any),
                    })
                    .collect();
                let a = MatRef::row_major(&values[rows.start * dims..rows.end * dims], dims);
                let mut col0 = 0;
                while col0 < width {
                    let cols = COLUMNS.min(width - col0);
                    let b = MatRef::row_major(&columns[col0..], n);
                    gemm(rows.len(), cols, dims, &a, &b, tile, COLUMNS, Start::Zero, scratch);
                    for (i, list) in lists.iter_mut().enumerate() {
                        let dots = &tile[i * COLUMNS..i * COLUMNS + cols];
                        scan(rows.start + i, col0, dots, &squared, search, list);
                    }
                    col0 += cols;
                }
                rows.zip(&lists).map(|(query, list)| (finish(&list.vote, query), finish(&list.any, query))).collect()
            },
        )
        .collect();
    let mut found = Found { votes: Vec::with_capacity(search.n_train), nearest: Vec::with_capacity(n) };
    for (query, (vote, any)) in per_block.into_iter().flatten().enumerate() {
        if query < search.n_train {
            found.votes.push(vote);
        }
        found.nearest.push(any);
    }
    Ok(found)
}

/// Dense-free check used by tests: the same search by brute force in f64.
#[cfg(test)]
pub fn brute_force(values: &[f32], dims: usize, search: &Search<'_>) -> Found {
    let n = values.len() / dims;
    let distance = |a: usize, b: usize| -> f64 {
        let (x, y) = (&values[a * dims..(a + 1) * dims], &values[b * dims..(b + 1) * dims]);
        x.iter().zip(y).map(|(p, q)| (*p as f64 - *q as f64).powi(2)).sum::<f64>().sqrt()
    };
    let mut found = Found::default();
    for query in 0..n {
        let columns = if query < search.n_train { search.n_train } else { n };
        let mut all: Vec<Neighbour> = (0..columns)
            .filter(|&j| j != query)
            .map(|j| Neighbour { row: j as u32, distance: distance(query, j) })
            .collect();
        all.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.row.cmp(&b.row)));
        if query < search.n_train {
            let fold = search.fold[query];
            found.votes.push(
                all.iter().filter(|nb| search.fold[nb.row as usize] != fold).take(search.k_vote).copied().collect(),
            );
        }
        found.nearest.push(all.into_iter().take(search.k_any).collect());
    }
    found
}

/// A tensor from rows, for tests and callers that hold plain vectors.
pub fn tensor(values: Vec<f32>, dims: usize) -> Result<Tensor, candle_core::Error> {
    let n = values.len() / dims.max(1);
    Tensor::from_vec(values, (n, dims), &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn matches_brute_force_with_folds() {
        let mut rng = Rng::new(3, "neighbours-test");
        let (n, dims, n_train) = (300, 7, 200);
        let values: Vec<f32> = (0..n * dims).map(|_| rng.normal() as f32).collect();
        let fold: Vec<u8> = (0..n_train).map(|i| (i % 5) as u8).collect();
        let spec = Search { n_train, fold: &fold, k_vote: 6, k_any: 3 };
        let fast = search(&tensor(values.clone(), dims).unwrap(), &spec).unwrap();
        let slow = brute_force(&values, dims, &spec);
        let rows = |lists: &Vec<Vec<Neighbour>>| -> Vec<Vec<u32>> {
            lists.iter().map(|l| l.iter().map(|nb| nb.row).collect()).collect()
        };
        assert_eq!(rows(&fast.votes), rows(&slow.votes));
        assert_eq!(rows(&fast.nearest), rows(&slow.nearest));
        for (a, b) in fast.votes.iter().flatten().zip(slow.votes.iter().flatten()) {
            assert!((a.distance - b.distance).abs() < 1e-9);
        }
        for (query, list) in fast.votes.iter().enumerate() {
            assert!(list.iter().all(|nb| fold[nb.row as usize] != fold[query]));
        }
    }
}
