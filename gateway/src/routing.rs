//! Arm selection: A/B header, sticky key (weighted rendezvous hashing) and
//! weighted random.
//!
//! [`ArmTable`] is built once per config snapshot and only read on the
//! request path: no allocation, no lock.
//!
//! Sticky keys use *weighted rendezvous hashing* (Schindelhauer & Schomaker's
//! logarithmic method): each arm scores `-ln(u) / w` with `u` a uniform hash of
//! `(key, arm name)`, and the lowest score wins. An arm wins with probability
//! `w / Σw`, the result depends only on the key and the arm names (not on their
//! order, the process or the replica), and changing one weight moves only the
//! users who must move to or from that arm.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// One arm as the selector sees it.
#[derive(Debug, Clone)]
struct Entry {
    /// Whether the A/B header may name this arm.
    header: bool,
    name: Box<str>,
    weight: u32,
    seed: u64,
}

/// The arms of one route, ready for selection.
#[derive(Debug, Clone)]
pub struct ArmTable {
    entries: Box<[Entry]>,
    /// Running sums of weights, for weighted random picks.
    cumulative: Box<[u64]>,
    total: u64,
}

/// Why an arm was chosen (reported in logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The A/B header named it.
    Header,
    /// The sticky key hashed onto it.
    Sticky,
    /// Weighted random.
    Weighted,
    /// The request named the arm's upstream model.
    Model,
    /// A task poll, sent where the task runs.
    Task,
}

impl Reason {
    /// Label value for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Header => "header",
            Reason::Sticky => "sticky",
            Reason::Weighted => "weighted",
            Reason::Model => "model",
            Reason::Task => "task",
        }
    }
}

impl ArmTable {
    /// Builds the table from `(name, weight)` pairs in route order.
    pub fn new<'a>(arms: impl IntoIterator<Item = (&'a str, u32)>) -> Self {
        let entries: Box<[Entry]> = arms
            .into_iter()
            .map(|(name, weight)| Entry {
                header: true,
                name: name.into(),
                weight,
                seed: xxh3_64(name.as_bytes()),
            })
            .collect();
        let mut total = 0u64;
        let cumulative = entries
            .iter()
            .map(|e| {
                total += u64::from(e.weight);
                total
            })
            .collect();
        Self {
            entries,
            cumulative,
            total,
        }
    }

    /// Number of arms.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the route has no arms.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sum of all weights.
    pub fn total_weight(&self) -> u64 {
        self.total
    }

    /// Index of the arm whose name is exactly `name` (and that the A/B
    /// header may name).
    pub fn by_name(&self, name: &[u8]) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.header && e.name.as_bytes() == name)
    }

    /// Makes the A/B header unable to name arm `i`.
    pub fn exclude_from_header(&mut self, i: usize) {
        if let Some(e) = self.entries.get_mut(i) {
            e.header = false;
        }
    }

    /// Weighted pick for a uniform `r` in `[0, total_weight)`.
    pub fn pick_weighted_with(&self, r: u64) -> Option<usize> {
        if self.total == 0 {
            return None;
        }
        let r = r % self.total;
        self.cumulative.iter().position(|&c| r < c)
    }

    /// Weighted random pick; `None` when every weight is 0.
    pub fn pick_weighted(&self) -> Option<usize> {
        if self.total == 0 {
            return None;
        }
        self.pick_weighted_with(fastrand::u64(..self.total))
    }

    /// Weighted rendezvous pick for a sticky `key`; `None` when every weight is 0.
    pub fn pick_sticky(&self, key: &[u8]) -> Option<usize> {
        let mut best: Option<(usize, f64)> = None;
        for (i, e) in self.entries.iter().enumerate() {
            if e.weight == 0 {
                continue;
            }
            let score = rendezvous_score(xxh3_64_with_seed(key, e.seed), e.weight);
            if best.is_none_or(|(_, s)| score < s) {
                best = Some((i, score));
            }
        }
        best.map(|(i, _)| i)
    }

    /// The full selection rule: a header naming an arm wins; else the sticky
    /// key, if any; else weighted random.
    pub fn select(&self, ab: Option<&[u8]>, sticky: Option<&[u8]>) -> Option<(usize, Reason)> {
        if let Some(i) = ab.and_then(|v| self.by_name(v)) {
            return Some((i, Reason::Header));
        }
        if let Some(key) = sticky {
            return self.pick_sticky(key).map(|i| (i, Reason::Sticky));
        }
        self.pick_weighted().map(|i| (i, Reason::Weighted))
    }
}

/// `-ln(u) / w` with `u` in (0, 1) taken from the top 53 bits of `hash`.
fn rendezvous_score(hash: u64, weight: u32) -> f64 {
    const SCALE: f64 = 1.0 / (1u64 << 53) as f64;
    let u = ((hash >> 11) as f64 + 0.5) * SCALE;
    -u.ln() / f64::from(weight)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn table(w: &[(&str, u32)]) -> ArmTable {
        ArmTable::new(w.iter().copied())
    }

    /// Pearson's χ² of `counts` against the expected shares of `weights`.
    fn chi_square(counts: &[u64], weights: &[u32]) -> f64 {
        let n: u64 = counts.iter().sum();
        let total: u32 = weights.iter().sum();
        counts
            .iter()
            .zip(weights)
            .filter(|(_, w)| **w > 0)
            .map(|(&c, &w)| {
                let e = n as f64 * f64::from(w) / f64::from(total);
                (c as f64 - e).powi(2) / e
            })
            .sum()
    }

    #[test]
    fn weighted_random_follows_weights() {
        let t = table(&[("a", 70), ("b", 20), ("c", 10)]);
        let mut counts = [0u64; 3];
        fastrand::seed(7);
        for _ in 0..100_000 {
            counts[t.pick_weighted().unwrap()] += 1;
        }
        // 2 degrees of freedom: p = 0.001 at 13.8.
        let chi = chi_square(&counts, &[70, 20, 10]);
        assert!(chi < 13.8, "χ² = {chi}, counts {counts:?}");
        for (c, w) in counts.iter().zip([70.0, 20.0, 10.0]) {
            let share = *c as f64 / 1000.0;
            assert!((share - w).abs() < 1.0, "{counts:?}");
        }
    }

    #[test]
    fn weighted_pick_is_exact_over_the_whole_range() {
        let t = table(&[("a", 3), ("b", 0), ("c", 1)]);
        let picks: Vec<usize> = (0..4).map(|r| t.pick_weighted_with(r).unwrap()).collect();
        assert_eq!(picks, [0, 0, 0, 2]);
    }

    #[test]
    fn sticky_distribution_follows_weights() {
        let t = table(&[("v1", 90), ("v2", 10)]);
        let mut counts = [0u64; 2];
        for user in 0..100_000u32 {
            counts[t.pick_sticky(format!("user-{user}").as_bytes()).unwrap()] += 1;
        }
        let chi = chi_square(&counts, &[90, 10]);
        assert!(chi < 10.8, "χ² = {chi}, counts {counts:?}");
    }

    #[test]
    fn sticky_is_stable_and_independent_of_arm_order() {
        let a = table(&[("v1", 50), ("v2", 30), ("v3", 20)]);
        let b = table(&[("v3", 20), ("v1", 50), ("v2", 30)]);
        for user in 0..10_000u32 {
            let key = format!("u{user}");
            let first = a.pick_sticky(key.as_bytes()).unwrap();
            assert_eq!(first, a.pick_sticky(key.as_bytes()).unwrap());
            let name_a = &a.entries[first].name;
            let name_b = &b.entries[b.pick_sticky(key.as_bytes()).unwrap()].name;
            assert_eq!(name_a, name_b);
        }
    }

    #[test]
    fn weight_change_moves_only_the_users_who_must_move() {
        let before = table(&[("v1", 90), ("v2", 10)]);
        let after = table(&[("v1", 80), ("v2", 20)]);
        let users = 100_000u32;
        let mut moved = 0u32;
        let mut wrong_direction = 0u32;
        for user in 0..users {
            let key = format!("user-{user}");
            let (x, y) = (
                before.pick_sticky(key.as_bytes()).unwrap(),
                after.pick_sticky(key.as_bytes()).unwrap(),
            );
            if x != y {
                moved += 1;
                if x == 1 {
                    wrong_direction += 1;
                }
            }
        }
        let pct = f64::from(moved) * 100.0 / f64::from(users);
        // Ideal: exactly 10% of users move, all from v1 to v2.
        assert!((pct - 10.0).abs() <= 2.0, "moved {pct}%");
        assert_eq!(wrong_direction, 0, "users left v2 although its weight grew");
    }

    #[test]
    fn header_overrides_and_zero_weight_is_reachable_only_by_header() {
        let t = table(&[("stable", 100), ("dark", 0)]);
        assert_eq!(
            t.select(Some(b"dark"), Some(b"u1")),
            Some((1, Reason::Header))
        );
        assert_eq!(t.select(Some(b"stable"), None), Some((0, Reason::Header)));
        for user in 0..10_000u32 {
            let key = format!("u{user}");
            assert_eq!(
                t.select(None, Some(key.as_bytes())),
                Some((0, Reason::Sticky))
            );
            assert_eq!(t.select(Some(b"nope"), None), Some((0, Reason::Weighted)));
        }
    }

    #[test]
    fn all_zero_weights_pick_nothing_without_header() {
        let t = table(&[("a", 0), ("b", 0)]);
        assert_eq!(t.select(None, None), None);
        assert_eq!(t.select(None, Some(b"k")), None);
        assert_eq!(t.select(Some(b"b"), None), Some((1, Reason::Header)));
    }
}
