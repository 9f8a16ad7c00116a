//! Which endpoint takes a call: prefix affinity, load, health.
//!
//! Calls whose prompts begin alike (one signature's instructions and demos,
//! an optimizer's candidate instruction over many examples) go to the
//! endpoint that last read that beginning, so its prefix cache serves them;
//! other calls go to the least-loaded endpoint. Affinity yields to load when
//! the endpoint it names is busier than the idlest by more than
//! [`BALANCE_SLACK`] calls (and than twice the idlest's load), so one hot
//! prefix cannot pile every call on one engine. No I/O here: the backend
//! reports what its calls found ([`Fleet::mark_down`], [`Fleet::mark_up`]).

use std::collections::{HashSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::dialect::RemoteEngine;

/// Bytes of prompt per affinity block: prompts are compared block by block
/// from their start (a block shorter than this at the end is not compared).
const BLOCK_BYTES: usize = 256;
/// Block hashes each endpoint remembers (oldest forgotten first): about
/// 16 MiB of prompt text seen, for 64 Ki hashes of 8 bytes.
const REMEMBERED_BLOCKS: usize = 1 << 16;
/// Calls an endpoint may have beyond the idlest one's before affinity
/// yields to load.
const BALANCE_SLACK: usize = 4;

/// One endpoint as the router sees it.
#[derive(Debug)]
struct Member {
    url: String,
    engine: RemoteEngine,
    healthy: bool,
    in_flight: usize,
    /// Calls sent here so far: ties on load go to the one served least,
    /// so calls take turns.
    served: u64,
    /// Hashes of prompt prefixes sent here, in arrival order.
    seen: HashSet<u64>,
    order: VecDeque<u64>,
}

impl Member {
    /// How many of `blocks` (prefix hashes, shortest first) this endpoint
    /// has read, counting from the start.
    fn matched(&self, blocks: &[u64]) -> usize {
        blocks.iter().take_while(|b| self.seen.contains(b)).count()
    }

    fn remember(&mut self, blocks: &[u64]) {
        for &block in blocks {
            if self.seen.insert(block) {
                self.order.push_back(block);
            }
        }
        while self.order.len() > REMEMBERED_BLOCKS {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
    }
}

/// The endpoints and what the router knows of each.
#[derive(Debug)]
pub(crate) struct Fleet {
    members: Mutex<Vec<Member>>,
    affinity: bool,
}

/// An endpoint chosen for one call; it counts as busy until dropped.
#[derive(Debug)]
pub(crate) struct Lease<'f> {
    fleet: &'f Fleet,
    pub(crate) index: usize,
    pub(crate) url: String,
    pub(crate) engine: RemoteEngine,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(member) = self.fleet.members().get_mut(self.index) {
            member.in_flight = member.in_flight.saturating_sub(1);
        }
    }
}

/// What a fleet looks like now (for logs, tests and the bench).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointStatus {
    /// The base URL.
    pub url: String,
    /// Whether calls go to it (it answered its last call or health check).
    pub healthy: bool,
    /// Calls on it now.
    pub in_flight: usize,
    /// Calls sent to it so far (retries included).
    pub served: u64,
}

impl Fleet {
    pub(crate) fn new(endpoints: &[(String, RemoteEngine)], affinity: bool) -> Self {
        let members = endpoints
            .iter()
            .map(|(url, engine)| Member {
                url: url.clone(),
                engine: *engine,
                healthy: true,
                in_flight: 0,
                served: 0,
                seen: HashSet::new(),
                order: VecDeque::new(),
            })
            .collect();
        Fleet {
            members: Mutex::new(members),
            affinity,
        }
    }

    /// The members, whatever a panicking holder left (counts stay usable).
    fn members(&self) -> MutexGuard<'_, Vec<Member>> {
        self.members.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Chooses the endpoint for a call with `prompt`, among those not in
    /// `tried`: a healthy one if any (by affinity, then load), else the
    /// untried one that is down (the call itself probes it). `None` once
    /// every endpoint has been tried.
    pub(crate) fn pick(&self, prompt: &str, tried: &[usize]) -> Option<Lease<'_>> {
        let blocks = prefix_blocks(prompt);
        let mut members = self.members();
        let open: Vec<usize> = (0..members.len()).filter(|i| !tried.contains(i)).collect();
        let healthy: Vec<usize> = open
            .iter()
            .copied()
            .filter(|&i| members[i].healthy)
            .collect();
        let pool = if healthy.is_empty() { open } else { healthy };
        let least_loaded = pool
            .iter()
            .copied()
            .min_by_key(|&i| (members[i].in_flight, members[i].served))?;
        let idlest = members[least_loaded].in_flight;
        let by_affinity = self
            .affinity
            .then(|| {
                pool.iter()
                    .copied()
                    .map(|i| (members[i].matched(&blocks), i))
                    .filter(|&(matched, _)| matched > 0)
                    .max_by_key(|&(matched, i)| (matched, std::cmp::Reverse(members[i].in_flight)))
                    .map(|(_, i)| i)
            })
            .flatten()
            .filter(|&i| members[i].in_flight <= idlest + BALANCE_SLACK.max(idlest));
        let index = by_affinity.unwrap_or(least_loaded);
        let member = &mut members[index];
        member.in_flight += 1;
        member.served += 1;
        member.remember(&blocks);
        Some(Lease {
            fleet: self,
            index,
            url: member.url.clone(),
            engine: member.engine,
        })
    }

    /// The call to endpoint `index` could not reach it, or it failed: no
    /// call goes there until [`mark_up`](Self::mark_up).
    pub(crate) fn mark_down(&self, index: usize) {
        if let Some(member) = self.members().get_mut(index) {
            member.healthy = false;
        }
    }

    /// Endpoint `index` answered: calls go there again.
    pub(crate) fn mark_up(&self, index: usize) {
        if let Some(member) = self.members().get_mut(index) {
            member.healthy = true;
        }
    }

    /// The base URLs, by index.
    pub(crate) fn urls(&self) -> Vec<String> {
        self.members().iter().map(|m| m.url.clone()).collect()
    }

    /// Each endpoint now.
    pub(crate) fn status(&self) -> Vec<EndpointStatus> {
        self.members()
            .iter()
            .map(|m| EndpointStatus {
                url: m.url.clone(),
                healthy: m.healthy,
                in_flight: m.in_flight,
                served: m.served,
            })
            .collect()
    }
}

/// A hash of each whole block-sized prefix of `prompt`, shortest first:
/// two prompts share their first `k` hashes exactly when (hash collisions
/// aside) they share their first `k` blocks.
fn prefix_blocks(prompt: &str) -> Vec<u64> {
    let mut hasher = DefaultHasher::new();
    prompt
        .as_bytes()
        .chunks_exact(BLOCK_BYTES)
        .map(|block| {
            block.hash(&mut hasher);
            hasher.finish()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(n: usize, affinity: bool) -> Fleet {
        let endpoints: Vec<_> = (0..n)
            .map(|i| (format!("http://e{i}"), RemoteEngine::LlamaServer))
            .collect();
        Fleet::new(&endpoints, affinity)
    }

    /// A prompt of `signature`'s prefix (several blocks) then `question`.
    fn prompt(signature: char, question: usize) -> String {
        format!(
            "{}{question}",
            signature.to_string().repeat(3 * BLOCK_BYTES)
        )
    }

    #[test]
    fn calls_sharing_a_prefix_go_where_it_was_read_and_others_spread() {
        let fleet = fleet(3, true);
        let first = fleet.pick(&prompt('a', 0), &[]).expect("an endpoint").index;
        drop(fleet.pick(&prompt('b', 0), &[]));
        // Idle fleet: every later call of signature `a` follows the first.
        for question in 1..20 {
            let lease = fleet
                .pick(&prompt('a', question), &[])
                .expect("an endpoint");
            assert_eq!(lease.index, first, "question {question}");
        }
        // Held calls: a new signature goes to the idlest endpoint.
        let held: Vec<_> = (0..3)
            .map(|q| fleet.pick(&prompt('a', q), &[]).expect("an endpoint"))
            .collect();
        assert!(held.iter().all(|l| l.index == first));
        let other = fleet.pick(&prompt('c', 0), &[]).expect("an endpoint");
        assert_ne!(other.index, first);
    }

    #[test]
    fn affinity_yields_when_its_endpoint_is_far_busier() {
        let fleet = fleet(2, true);
        let mut held = Vec::new();
        for question in 0..=BALANCE_SLACK + 1 {
            held.push(
                fleet
                    .pick(&prompt('a', question), &[])
                    .expect("an endpoint"),
            );
        }
        let home = held[0].index;
        let on_home = held.iter().filter(|l| l.index == home).count();
        assert_eq!(on_home, BALANCE_SLACK + 1, "{held:?}");
        assert_eq!(fleet.status()[1 - home].in_flight, 1);
    }

    #[test]
    fn without_affinity_calls_go_to_the_least_loaded_in_turn() {
        let fleet = fleet(4, false);
        let held: Vec<_> = (0..8)
            .map(|q| fleet.pick(&prompt('a', q), &[]).expect("an endpoint"))
            .collect();
        let status = fleet.status();
        assert!(status.iter().all(|s| s.in_flight == 2), "{status:?}");
        drop(held);
        assert!(fleet.status().iter().all(|s| s.in_flight == 0));
    }

    #[test]
    fn a_down_endpoint_gets_no_calls_until_it_is_up_and_the_last_resort_is_tried() {
        let fleet = fleet(2, true);
        fleet.mark_down(0);
        for question in 0..5 {
            assert_eq!(
                fleet.pick(&prompt('a', question), &[]).map(|l| l.index),
                Some(1)
            );
        }
        // Every healthy one tried: the down one is the probe; then none.
        assert_eq!(fleet.pick(&prompt('a', 9), &[1]).map(|l| l.index), Some(0));
        assert!(fleet.pick(&prompt('a', 9), &[0, 1]).is_none());
        fleet.mark_up(0);
        assert!(fleet.status()[0].healthy);
        // Back in turn: it has served fewer calls, so a new prefix goes there.
        assert_eq!(fleet.pick(&prompt('z', 0), &[]).map(|l| l.index), Some(0));
    }

    #[test]
    fn prefix_blocks_match_exactly_the_shared_whole_blocks() {
        let a = prefix_blocks(&format!("{}{}", "x".repeat(600), "tail one"));
        let b = prefix_blocks(&format!("{}{}", "x".repeat(600), "another tail"));
        assert_eq!(a.len(), 2);
        assert_eq!(a, b);
        let c = prefix_blocks(&format!("y{}", "x".repeat(599)));
        assert_ne!(a[0], c[0]);
        assert!(prefix_blocks("short").is_empty());
    }
}
