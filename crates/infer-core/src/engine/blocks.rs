//! The block pool of the paged KV cache: allocation with reference counts, and prefix caching.
//!
//! A full block is registered under the hash of (its parent block's hash, its tokens), so equal
//! prefixes (a shared system prompt) map to the same blocks. Released blocks keep their content
//! and stay findable until the allocator reuses them, least recently released first.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

/// Hash of a full block given its parent's hash (`0` for the first block).
pub(crate) fn block_hash(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = DefaultHasher::new(); // SipHash with fixed keys: deterministic
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

#[derive(Debug)]
pub(crate) struct BlockPool {
    block_size: usize,
    refs: Vec<u32>,
    /// `(hash, parent hash, tokens)` of a registered full block (compared on lookup, so a hash
    /// collision can never hand out another prefix's K/V).
    key: Vec<Option<(u64, u64, Vec<u32>)>>,
    /// Registered full blocks by hash (the scheduler thread owns the pool: no lock needed).
    cached: HashMap<u64, u32>,
    /// Released blocks, least recently released first; entries whose block was revived since
    /// are stale and skipped (`in_free` tells).
    free: VecDeque<u32>,
    in_free: Vec<bool>,
    n_free: usize,
}

impl BlockPool {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        BlockPool {
            block_size,
            refs: vec![0; num_blocks],
            key: vec![None; num_blocks],
            cached: HashMap::new(),
            free: (0..num_blocks as u32).collect(),
            in_free: vec![true; num_blocks],
            n_free: num_blocks,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn total(&self) -> usize {
        self.refs.len()
    }

    /// Blocks that can be allocated now (cached ones included).
    pub fn free(&self) -> usize {
        self.n_free
    }

    /// A fresh block (reference count 1), evicting the least recently released cached block.
    pub fn allocate(&mut self) -> Option<u32> {
        while let Some(b) = self.free.pop_front() {
            if !std::mem::replace(&mut self.in_free[b as usize], false) {
                continue; // stale entry: revived by a prefix hit since it was released
            }
            self.n_free -= 1;
            if let Some((hash, _, _)) = self.key[b as usize].take()
                && self.cached.get(&hash) == Some(&b)
            {
                self.cached.remove(&hash);
            }
            self.refs[b as usize] = 1;
            return Some(b);
        }
        None
    }

    /// Drops one reference; at zero the block becomes allocatable (its content stays cached).
    pub fn release(&mut self, b: u32) {
        let r = &mut self.refs[b as usize];
        *r = r.saturating_sub(1);
        if *r == 0 && !self.in_free[b as usize] {
            self.in_free[b as usize] = true;
            self.n_free += 1;
            self.free.push_back(b);
            if self.free.len() > 4 * self.refs.len() {
                let in_free = &self.in_free;
                let mut seen = vec![false; in_free.len()];
                self.free.retain(|&x| in_free[x as usize] && !std::mem::replace(&mut seen[x as usize], true));
            }
        }
    }

    /// The cached block holding `tokens` after the prefix hashed `parent`, with one more
    /// reference taken.
    pub fn lookup(&mut self, parent: u64, tokens: &[u32]) -> Option<(u32, u64)> {
        let hash = block_hash(parent, tokens);
        let b = *self.cached.get(&hash)?;
        match &self.key[b as usize] {
            Some((h, p, t)) if *h == hash && *p == parent && t == tokens => {}
            _ => return None,
        }
        if std::mem::replace(&mut self.in_free[b as usize], false) {
            self.n_free -= 1;
        }
        self.refs[b as usize] += 1;
        Some((b, hash))
    }

    /// Registers full block `b` holding `tokens` after the prefix hashed `parent`; returns its hash.
    pub fn register(&mut self, b: u32, parent: u64, tokens: &[u32]) -> u64 {
        let hash = block_hash(parent, tokens);
        self.cached.entry(hash).or_insert(b);
        self.key[b as usize] = Some((hash, parent, tokens.to_vec()));
        hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_release_and_prefix_hits() {
        let mut p = BlockPool::new(3, 2);
        let a = p.allocate().unwrap();
        let h = p.register(a, 0, &[1, 2]);
        let b = p.allocate().unwrap();
        assert_eq!(p.free(), 1);
        // a second sequence with the same first block shares it
        assert_eq!(p.lookup(0, &[1, 2]), Some((a, h)));
        assert_eq!(p.lookup(0, &[1, 3]), None);
        assert_eq!(p.lookup(7, &[1, 2]), None); // other parent
        p.release(a);
        p.release(a);
        p.release(b);
        assert_eq!(p.free(), 3);
        // released but cached: a hit revives it without allocation
        assert_eq!(p.lookup(0, &[1, 2]).map(|x| x.0), Some(a));
        assert_eq!(p.free(), 2);
        // the revived block is never handed out by allocate while referenced
        let (x, y) = (p.allocate().unwrap(), p.allocate().unwrap());
        assert!(x != a && y != a && x != y);
        assert_eq!(p.allocate(), None);
        p.release(a);
        // allocation evicts it: the prefix is gone
        assert_eq!(p.allocate(), Some(a));
        assert_eq!(p.lookup(0, &[1, 2]), None);
    }

    #[test]
    fn free_list_stays_bounded_under_revive_cycles() {
        let mut p = BlockPool::new(2, 1);
        let a = p.allocate().unwrap();
        p.register(a, 0, &[5]);
        for _ in 0..100 {
            p.release(a);
            assert!(p.lookup(0, &[5]).is_some());
        }
        assert!(p.free.len() <= 8);
        assert_eq!(p.free(), 1);
    }
}
