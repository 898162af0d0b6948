//! The RFC 9162 (Certificate Transparency v2) Merkle tree behind the tamper-evident access log.
//!
//! Hashing follows RFC 9162 §2.1.1: SHA-256, leaves prefixed with `0x00`, interior nodes with
//! `0x01`, so that a leaf can never be passed off as an interior node (second-preimage defence).
//!
//! The tree is storage-agnostic. A store keeps only the hashes of *complete* subtrees — level 0
//! holds the leaf hashes, level `k` index `i` holds the hash of leaves `[i·2^k, (i+1)·2^k)` — and
//! exposes them through [`NodeStore`]. Such nodes never change once written, which is what makes
//! an append-only table (SQLite or PostgreSQL) a sufficient backing store. [`new_nodes`] tells the
//! store what to write on each append; [`root`], [`inclusion_proof`] and [`consistency_proof`]
//! read O(log n) of those nodes, whatever the tree size, including for any earlier size of the
//! tree (the nodes of a prefix are a subset of the nodes of the whole).
//!
//! Verification ([`verify_inclusion`], [`verify_consistency`]) needs no store: it is the
//! iterative algorithm of RFC 9162 §2.1.3.2 and §2.1.4.2, as an auditor would run it offline.

use sha2::{Digest, Sha256};

/// A SHA-256 digest: a leaf hash, an interior node hash or a tree root.
pub type Hash = [u8; 32];

/// The root of the empty tree, `SHA-256("")` (RFC 9162 §2.1.1). Written out because a constant
/// cannot call SHA-256; a test checks it.
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// Domain-separation prefix of leaf hashes (RFC 9162 §2.1.1).
const LEAF_PREFIX: u8 = 0x00;
/// Domain-separation prefix of interior node hashes (RFC 9162 §2.1.1).
const NODE_PREFIX: u8 = 0x01;

/// The hash of one leaf: `SHA-256(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([LEAF_PREFIX]);
    hasher.update(data);
    hasher.finalize().into()
}

/// The hash of an interior node: `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([NODE_PREFIX]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// Why a proof or a root could not be produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// No such proof exists: the leaf index is not below the tree size, or the old size of a
    /// consistency proof exceeds the new size. This is the caller's mistake, not the store's.
    #[error("leaf index or tree size out of range")]
    OutOfRange,
    /// The node store failed, or lacks a complete-subtree node that a tree of the requested size
    /// must have (the size is beyond what was appended, or the store lost data). The message is
    /// for operators; it names the missing node when one is missing.
    #[error("merkle node store: {0}")]
    Store(String),
}

/// Read access to the stored hashes of complete subtrees.
///
/// `node(level, index)` is the hash of leaves `[index·2^level, (index+1)·2^level)`, or `None` if
/// that subtree is not complete yet (or not stored). Implementations need not know the tree
/// size: every function here only asks for nodes that a tree of the size it was given contains.
pub trait NodeStore {
    /// Why a read failed. Only its text is kept, in [`ProofError::Store`], so that the proof
    /// functions do not need to be generic over every backend's error type.
    type Error: std::fmt::Display;

    /// The stored hash of complete subtree `index` at `level`, if there is one.
    fn node(&self, level: u32, index: u64) -> Result<Option<Hash>, Self::Error>;
}

impl<S: NodeStore + ?Sized> NodeStore for &S {
    type Error = S::Error;

    fn node(&self, level: u32, index: u64) -> Result<Option<Hash>, Self::Error> {
        (**self).node(level, index)
    }
}

/// The complete-subtree nodes that appending leaf number `leaf_index` (0-based) creates, as
/// `(level, index, hash)`, lowest level first: the leaf itself at level 0, then, while the
/// node's index at the current level is odd, its parent — the left sibling being complete
/// already and fetched with `lookup(level, index - 1)`.
///
/// There are `1 + trailing_ones(leaf_index)` of them, so an append costs O(1) writes amortised
/// and O(log n) at worst. `lookup` is only asked for nodes of leaves before `leaf_index`; when a
/// store appends several leaves in one transaction (group commit), `lookup` must also see the
/// nodes returned for the earlier leaves of that batch.
pub fn new_nodes<E>(
    leaf_index: u64,
    leaf: Hash,
    mut lookup: impl FnMut(u32, u64) -> Result<Hash, E>,
) -> Result<Vec<(u32, u64, Hash)>, E> {
    let mut nodes = vec![(0, leaf_index, leaf)];
    let (mut level, mut index, mut hash) = (0u32, leaf_index, leaf);
    // An odd index is a right child: its subtree completes its parent's.
    while index & 1 == 1 {
        let left = lookup(level, index - 1)?;
        hash = node_hash(&left, &hash);
        level += 1;
        index >>= 1;
        nodes.push((level, index, hash));
    }
    Ok(nodes)
}

/// An in-memory tree holding every complete-subtree node, one vector per level. For tests,
/// benchmarks and tools that rebuild a tree from exported leaves; the log store keeps the same
/// nodes in its database instead.
#[derive(Debug, Clone, Default)]
pub struct MemoryTree {
    /// `levels[k][i]` is the hash of leaves `[i·2^k, (i+1)·2^k)`; `levels[k].len()` is always
    /// `len() >> k`, which is what lets [`MemoryTree::push_leaf_hash`] find left siblings.
    levels: Vec<Vec<Hash>>,
}

impl MemoryTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a leaf with these bytes; returns its index.
    pub fn push(&mut self, data: &[u8]) -> u64 {
        self.push_leaf_hash(leaf_hash(data))
    }

    /// Appends a leaf given its leaf hash (see [`leaf_hash`]); returns its index.
    pub fn push_leaf_hash(&mut self, leaf: Hash) -> u64 {
        let index = self.len();
        // Appending leaf `index` completes one node at each level 0..=top (see `new_nodes`).
        let top = index.trailing_ones() as usize;
        while self.levels.len() <= top {
            self.levels.push(Vec::new());
        }
        let mut hash = leaf;
        for (level, row) in self.levels.iter_mut().enumerate().take(top + 1) {
            row.push(hash);
            // Below `top` the new node is a right child, so the row now ends with its left
            // sibling and itself (the row holds `(index >> level) + 1 >= 2` nodes).
            if level < top
                && let [.., left, right] = row.as_slice()
            {
                hash = node_hash(left, right);
            }
        }
        index
    }

    /// The number of leaves.
    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |leaves| leaves.len() as u64)
    }

    /// Whether the tree has no leaves.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl NodeStore for MemoryTree {
    type Error = std::convert::Infallible;

    fn node(&self, level: u32, index: u64) -> Result<Option<Hash>, Self::Error> {
        let row = usize::try_from(level).ok().and_then(|l| self.levels.get(l));
        let index = usize::try_from(index).ok();
        Ok(row.zip(index).and_then(|(row, i)| row.get(i)).copied())
    }
}

/// A stored node that a tree of the requested size must contain.
fn stored<S: NodeStore + ?Sized>(store: &S, level: u32, index: u64) -> Result<Hash, ProofError> {
    match store.node(level, index) {
        Ok(Some(hash)) => Ok(hash),
        Ok(None) => Err(ProofError::Store(format!(
            "missing node at level {level}, index {index}"
        ))),
        Err(e) => Err(ProofError::Store(e.to_string())),
    }
}

/// The largest power of two strictly below `n`: RFC 9162's split point `k`. Requires `n >= 2`.
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// `MTH(D[lo:hi])`, following the RFC's recursive definition but reading a stored node
/// whenever the range is a complete, aligned subtree.
///
/// Every range the RFC algorithms ask for starts at a multiple of the power of two at or above
/// its length; then the left part of each split is a stored node and only the right part
/// recurses, so this reads at most one node per bit of `hi - lo`. Other ranges are still hashed
/// correctly, just with more reads.
fn subtree_hash<S: NodeStore + ?Sized>(store: &S, lo: u64, hi: u64) -> Result<Hash, ProofError> {
    let n = hi - lo;
    if n == 0 {
        return Ok(EMPTY_ROOT);
    }
    if n.is_power_of_two() && lo.is_multiple_of(n) {
        return stored(store, n.trailing_zeros(), lo / n);
    }
    let k = split(n);
    let left = subtree_hash(store, lo, lo + k)?;
    let right = subtree_hash(store, lo + k, hi)?;
    Ok(node_hash(&left, &right))
}

/// The root `MTH(D[0:size])` of the tree's first `size` leaves, from at most one stored node per
/// set bit of `size` (the complete subtrees `size` decomposes into). `size` 0 gives
/// [`EMPTY_ROOT`] without reading the store.
pub fn root<S: NodeStore + ?Sized>(store: &S, size: u64) -> Result<Hash, ProofError> {
    subtree_hash(store, 0, size)
}

/// The inclusion proof `PATH(index, D[0:size])` of RFC 9162 §2.1.3.1, leaf-side first.
///
/// Reads O(log size) nodes: the siblings are complete subtrees except at most one (the right
/// sibling where the path first turns left), which is itself O(log size) nodes.
pub fn inclusion_proof<S: NodeStore + ?Sized>(
    store: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, ProofError> {
    if index >= size {
        return Err(ProofError::OutOfRange);
    }
    // Walk the RFC recursion from the root down; each step's sibling is appended *after* the
    // deeper part of the path, so the list is built top-down and reversed at the end.
    let (mut lo, mut hi) = (0, size);
    let mut path = Vec::new();
    while hi - lo > 1 {
        let k = split(hi - lo);
        if index < lo + k {
            path.push(subtree_hash(store, lo + k, hi)?);
            hi = lo + k;
        } else {
            path.push(subtree_hash(store, lo, lo + k)?);
            lo += k;
        }
    }
    path.reverse();
    Ok(path)
}

/// The consistency proof `PROOF(old, D[0:new])` of RFC 9162 §2.1.4.1 (the `SUBPROOF`
/// algorithm), that the tree of size `old` is a prefix of the tree of size `new`.
///
/// The RFC defines proofs for `0 < old < new`; for `old == new` and for `old == 0` this returns
/// the empty proof, which [`verify_consistency`] accepts under the conditions it documents.
/// Reads O(log new) nodes, for the same reason as [`inclusion_proof`].
pub fn consistency_proof<S: NodeStore + ?Sized>(
    store: &S,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, ProofError> {
    if old > new {
        return Err(ProofError::OutOfRange);
    }
    if old == 0 || old == new {
        return Ok(Vec::new());
    }
    // Invariant: lo < old <= hi. `whole_old` is the RFC's flag `b`: still true while the current
    // subtree is the left edge of the tree, where the old root itself is a node of the new tree
    // and need not be sent.
    let (mut lo, mut hi) = (0, new);
    let mut whole_old = true;
    let mut proof = Vec::new();
    loop {
        if old == hi {
            if !whole_old {
                proof.push(subtree_hash(store, lo, hi)?);
            }
            break;
        }
        let k = split(hi - lo);
        if old <= lo + k {
            proof.push(subtree_hash(store, lo + k, hi)?);
            hi = lo + k;
        } else {
            proof.push(subtree_hash(store, lo, lo + k)?);
            lo += k;
            whole_old = false;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// Right-shifts `fn_` and `sn` together until `fn_` is odd or zero: the RFC's way of skipping
/// the levels where the node on the path is the tree's last and has no sibling.
fn skip_unpaired(fn_: &mut u64, sn: &mut u64) {
    while *fn_ != 0 && *fn_ & 1 == 0 {
        *fn_ >>= 1;
        *sn >>= 1;
    }
}

/// Whether `proof` shows that the leaf with hash `leaf_hash` is leaf `index` of the tree of
/// `size` leaves whose root is `root` (RFC 9162 §2.1.3.2).
///
/// False when `index >= size` and when the proof is longer or shorter than that tree's path.
/// As in every RFC 9162 verifier, the proof does not by itself pin down `size`: the same proof
/// can verify for another size whose path has the same shape, so `size` and `root` must come
/// from the same signed checkpoint.
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> bool {
    if index >= size {
        return false;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf_hash;
    for p in proof {
        // More hashes than levels: the proof is too long.
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            skip_unpaired(&mut fn_, &mut sn);
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    // `sn != 0` means levels were left over: the proof is too short.
    sn == 0 && r == *root
}

/// Whether `proof` shows that the tree of `old_size` leaves with root `old_root` is a prefix of
/// the tree of `new_size` leaves with root `new_root` (RFC 9162 §2.1.4.2).
///
/// Edge cases, outside the RFC's `0 < old < new`:
/// - `old_size > new_size`: false.
/// - `old_size == 0`: every tree extends the empty tree, so this is true iff the proof is empty
///   and `old_root` really is the empty tree's root [`EMPTY_ROOT`] (and, if `new_size` is 0 too,
///   so is `new_root`). Checking `old_root` costs nothing and catches a caller that mixed up a
///   size and a root.
/// - `old_size == new_size`: true iff the proof is empty and the roots are equal.
/// - otherwise an empty, too short or too long proof is false.
///
/// As with [`verify_inclusion`], a proof may also verify for other sizes whose proofs have the
/// same shape; the sizes must come with their roots from signed checkpoints.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old_size > new_size {
        return false;
    }
    if old_size == 0 {
        return proof.is_empty()
            && *old_root == EMPTY_ROOT
            && (new_size != 0 || *new_root == EMPTY_ROOT);
    }
    if old_size == new_size {
        return proof.is_empty() && old_root == new_root;
    }
    // RFC 9162 §2.1.4.2 step 1: between different non-empty trees there is always something
    // to show.
    if proof.is_empty() {
        return false;
    }
    // When the old tree is a complete subtree its root is the proof's implicit first element
    // (the RFC prepends it); otherwise the first element is where old and new paths join.
    let (first, rest) = if old_size.is_power_of_two() {
        (old_root, proof)
    } else {
        match proof.split_first() {
            Some(split) => split,
            None => return false,
        }
    };
    let (mut fn_, mut sn) = (old_size - 1, new_size - 1);
    // Climb past the levels where the old tree's last node is a right child inside `first`.
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            // A left sibling: part of both trees.
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            skip_unpaired(&mut fn_, &mut sn);
        } else {
            // A right sibling: only in the new tree.
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && fr == *old_root && sr == *new_root
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::collections::{BTreeMap, BTreeSet};

    /// splitmix64: a tiny deterministic generator, so failures reproduce without a `rand` dep.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// Uniform-enough in `lo..=hi` for sampling test cases.
        fn range(&mut self, lo: u64, hi: u64) -> u64 {
            lo + self.next() % (hi - lo + 1)
        }

        fn bytes(&mut self) -> Vec<u8> {
            let len = self.range(0, 40) as usize;
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    fn h(hex_str: &str) -> Hash {
        hex::decode(hex_str).unwrap().try_into().unwrap()
    }

    /// The RFC 6962 / CT reference leaves.
    fn reference_leaves() -> Vec<Vec<u8>> {
        [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
        .iter()
        .map(|s| hex::decode(s).unwrap())
        .collect()
    }

    fn tree_of(leaves: &[Vec<u8>]) -> MemoryTree {
        let mut tree = MemoryTree::new();
        for leaf in leaves {
            tree.push(leaf);
        }
        tree
    }

    // Reference implementations: the RFC's recursive definitions, straight over the leaf data,
    // sharing nothing with the stored-node code above except the two hash functions.

    fn k_of(n: usize) -> usize {
        let mut k = 1;
        while k * 2 < n {
            k *= 2;
        }
        k
    }

    fn ref_mth(d: &[Vec<u8>]) -> Hash {
        match d.len() {
            0 => Sha256::digest(b"").into(),
            1 => leaf_hash(&d[0]),
            n => {
                let k = k_of(n);
                node_hash(&ref_mth(&d[..k]), &ref_mth(&d[k..]))
            }
        }
    }

    /// `PATH(m, D)`.
    fn ref_path(m: usize, d: &[Vec<u8>]) -> Vec<Hash> {
        if d.len() <= 1 {
            return Vec::new();
        }
        let k = k_of(d.len());
        let (mut path, sibling) = if m < k {
            (ref_path(m, &d[..k]), ref_mth(&d[k..]))
        } else {
            (ref_path(m - k, &d[k..]), ref_mth(&d[..k]))
        };
        path.push(sibling);
        path
    }

    /// `SUBPROOF(m, D, b)`.
    fn ref_subproof(m: usize, d: &[Vec<u8>], b: bool) -> Vec<Hash> {
        let n = d.len();
        if m == n {
            return if b { Vec::new() } else { vec![ref_mth(d)] };
        }
        let k = k_of(n);
        let (mut proof, sibling) = if m <= k {
            (ref_subproof(m, &d[..k], b), ref_mth(&d[k..]))
        } else {
            (ref_subproof(m - k, &d[k..], false), ref_mth(&d[..k]))
        };
        proof.push(sibling);
        proof
    }

    /// The shape of `PATH(m, D[n])`, from the same recursion without any hashing: for each
    /// element, whether it is a left sibling. A verifier's output depends on (index, size) only
    /// through this.
    fn path_shape(m: usize, n: usize) -> Vec<bool> {
        if n <= 1 {
            return Vec::new();
        }
        let k = k_of(n);
        let (mut shape, left) = if m < k {
            (path_shape(m, k), false)
        } else {
            (path_shape(m - k, n - k), true)
        };
        shape.push(left);
        shape
    }

    /// The shape of `SUBPROOF(m, D[n], b)`: whether it starts with an explicit hash of a subtree
    /// of the old tree (otherwise the old root itself), then whether each later element is a
    /// left sibling (in both trees) or a right one (new tree only).
    fn subproof_shape(m: usize, n: usize, b: bool) -> (bool, Vec<bool>) {
        if m == n {
            return (!b, Vec::new());
        }
        let k = k_of(n);
        let ((first, mut steps), left) = if m <= k {
            (subproof_shape(m, k, b), false)
        } else {
            (subproof_shape(m - k, n - k, false), true)
        };
        steps.push(left);
        (first, steps)
    }

    #[test]
    fn constants_and_hashes() {
        assert_eq!(EMPTY_ROOT, <Hash>::from(Sha256::digest(b"")));
        let mut leaf = vec![0u8];
        leaf.extend_from_slice(b"abc");
        assert_eq!(leaf_hash(b"abc"), <Hash>::from(Sha256::digest(&leaf)));
        let (l, r) = ([1u8; 32], [2u8; 32]);
        let mut node = vec![1u8];
        node.extend_from_slice(&l);
        node.extend_from_slice(&r);
        assert_eq!(node_hash(&l, &r), <Hash>::from(Sha256::digest(&node)));
    }

    #[test]
    fn known_roots() {
        let expected = [
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let leaves = reference_leaves();
        let full = tree_of(&leaves);
        for (size, hex_root) in expected.iter().enumerate() {
            let want = h(hex_root);
            // From the full tree's nodes (a prefix), from a tree of exactly this size, and from
            // the RFC definition.
            assert_eq!(root(&full, size as u64).unwrap(), want, "size {size}");
            let exact = tree_of(&leaves[..size]);
            assert_eq!(exact.len(), size as u64);
            assert_eq!(root(&exact, size as u64).unwrap(), want, "size {size}");
            assert_eq!(ref_mth(&leaves[..size]), want, "size {size}");
        }
    }

    #[test]
    fn known_inclusion_proofs() {
        let leaves = reference_leaves();
        let tree = tree_of(&leaves);
        let cases: [(u64, u64, &[&str]); 4] = [
            (
                0,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                8,
                &[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                3,
                &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
            ),
            (
                1,
                5,
                &[
                    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (index, size, want) in cases {
            let want: Vec<Hash> = want.iter().map(|s| h(s)).collect();
            let proof = inclusion_proof(&tree, index, size).unwrap();
            assert_eq!(proof, want, "leaf {index} in tree {size}");
            let root_hash = root(&tree, size).unwrap();
            let leaf = leaf_hash(&leaves[index as usize]);
            assert!(verify_inclusion(&leaf, index, size, &want, &root_hash));
        }
    }

    #[test]
    fn known_consistency_proofs() {
        let tree = tree_of(&reference_leaves());
        let cases: [(u64, u64, &[&str]); 4] = [
            (1, 1, &[]),
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (old, new, want) in cases {
            let want: Vec<Hash> = want.iter().map(|s| h(s)).collect();
            let proof = consistency_proof(&tree, old, new).unwrap();
            assert_eq!(proof, want, "{old} -> {new}");
            let (old_root, new_root) = (root(&tree, old).unwrap(), root(&tree, new).unwrap());
            assert!(verify_consistency(old, new, &old_root, &new_root, &want));
        }
    }

    /// Every way of damaging a valid proof: each single-bit flip, each truncation and each
    /// extension (at either end).
    fn damaged(proof: &[Hash]) -> Vec<Vec<Hash>> {
        let mut out = Vec::new();
        for i in 0..proof.len() {
            for bit in 0..256 {
                let mut p = proof.to_vec();
                p[i][bit / 8] ^= 1 << (bit % 8);
                out.push(p);
            }
        }
        if !proof.is_empty() {
            out.push(proof[1..].to_vec());
            out.push(proof[..proof.len() - 1].to_vec());
        }
        for extra in [[0u8; 32], EMPTY_ROOT] {
            let mut p = proof.to_vec();
            p.push(extra);
            out.push(p);
            let mut p = vec![extra];
            p.extend_from_slice(proof);
            out.push(p);
        }
        out
    }

    #[test]
    fn every_small_inclusion_proof_verifies_and_damage_is_rejected() {
        let leaves = reference_leaves();
        let tree = tree_of(&leaves);
        for size in 1..=8u64 {
            let root_hash = root(&tree, size).unwrap();
            for index in 0..size {
                let leaf = leaf_hash(&leaves[index as usize]);
                let proof = inclusion_proof(&tree, index, size).unwrap();
                let want = ref_path(index as usize, &leaves[..size as usize]);
                assert_eq!(proof, want, "leaf {index} in tree {size}");
                assert!(verify_inclusion(&leaf, index, size, &proof, &root_hash));
                for bad in damaged(&proof) {
                    assert!(!verify_inclusion(&leaf, index, size, &bad, &root_hash));
                }
                let mut bad_root = root_hash;
                bad_root[31] ^= 1;
                assert!(!verify_inclusion(&leaf, index, size, &proof, &bad_root));
                assert!(!verify_inclusion(
                    &leaf_hash(b"x"),
                    index,
                    size,
                    &proof,
                    &root_hash
                ));
                // The data itself is not a leaf hash: the 0x00 prefix must be applied.
                assert!(!verify_inclusion(
                    &EMPTY_ROOT,
                    index,
                    size,
                    &proof,
                    &root_hash
                ));
            }
        }
    }

    #[test]
    fn every_small_consistency_proof_verifies_and_damage_is_rejected() {
        let tree = tree_of(&reference_leaves());
        for new in 0..=8u64 {
            let new_root = root(&tree, new).unwrap();
            for old in 0..=new {
                let old_root = root(&tree, old).unwrap();
                let proof = consistency_proof(&tree, old, new).unwrap();
                if 0 < old && old < new {
                    let want =
                        ref_subproof(old as usize, &reference_leaves()[..new as usize], true);
                    assert_eq!(proof, want, "{old} -> {new}");
                } else {
                    assert!(proof.is_empty());
                }
                assert!(verify_consistency(old, new, &old_root, &new_root, &proof));
                for bad in damaged(&proof) {
                    assert!(!verify_consistency(old, new, &old_root, &new_root, &bad));
                }
                if 0 < old && old < new {
                    // Roots that do not belong to these sizes.
                    let mut bad = old_root;
                    bad[0] ^= 0x80;
                    assert!(!verify_consistency(old, new, &bad, &new_root, &proof));
                    let mut bad = new_root;
                    bad[0] ^= 0x80;
                    assert!(!verify_consistency(old, new, &old_root, &bad, &proof));
                    assert!(!verify_consistency(old, new, &new_root, &old_root, &proof));
                }
            }
        }
    }

    /// Verifying an honest proof under another (index, size) fails unless the RFC paths of both
    /// have the same shape, which no verifier can tell apart (the size is bound to the root by
    /// the signed checkpoint, not by the proof). In particular, with the right size every other
    /// index fails.
    #[test]
    fn wrong_index_or_size_rejected_unless_same_shape() {
        let leaves: Vec<Vec<u8>> = (0..16u8).map(|i| vec![i; i as usize]).collect();
        let tree = tree_of(&leaves);
        let shapes: BTreeMap<(u64, u64), Vec<bool>> = (1..=40u64)
            .flat_map(|n| (0..n).map(move |m| ((m, n), path_shape(m as usize, n as usize))))
            .collect();
        let mut aliases = 0;
        for size in 1..=16u64 {
            let root_hash = root(&tree, size).unwrap();
            for index in 0..size {
                let leaf = leaf_hash(&leaves[index as usize]);
                let proof = inclusion_proof(&tree, index, size).unwrap();
                let shape = &shapes[&(index, size)];
                for size2 in 0..=40u64 {
                    for index2 in 0..=40u64 {
                        if (index2, size2) == (index, size) {
                            continue;
                        }
                        let same = shapes.get(&(index2, size2)) == Some(shape);
                        let ok = verify_inclusion(&leaf, index2, size2, &proof, &root_hash);
                        assert_eq!(ok, same, "proof ({index}, {size}) as ({index2}, {size2})");
                        if size2 == size {
                            assert!(!ok);
                        }
                        aliases += usize::from(ok);
                    }
                }
            }
        }
        assert!(aliases > 0, "the aliasing the doc comment warns of exists");
    }

    #[test]
    fn wrong_consistency_sizes_rejected_unless_same_shape() {
        let tree = tree_of(&(0..16u8).map(|i| vec![i]).collect::<Vec<_>>());
        // Only 0 < old < new has shapes; every other pair must reject a non-empty proof.
        let shapes: BTreeMap<(u64, u64), (bool, Vec<bool>)> = (1..=40u64)
            .flat_map(|n| {
                (1..n).map(move |m| ((m, n), subproof_shape(m as usize, n as usize, true)))
            })
            .collect();
        let mut aliases = 0;
        for new in 1..=16u64 {
            let new_root = root(&tree, new).unwrap();
            for old in 1..new {
                let old_root = root(&tree, old).unwrap();
                let proof = consistency_proof(&tree, old, new).unwrap();
                let shape = &shapes[&(old, new)];
                for new2 in 0..=40u64 {
                    for old2 in 0..=41u64 {
                        if (old2, new2) == (old, new) {
                            continue;
                        }
                        let same = shapes.get(&(old2, new2)) == Some(shape);
                        let ok = verify_consistency(old2, new2, &old_root, &new_root, &proof);
                        assert_eq!(ok, same, "proof {old}->{new} as {old2}->{new2}");
                        aliases += usize::from(ok);
                    }
                }
            }
        }
        assert!(aliases > 0, "the aliasing the doc comment warns of exists");
    }

    #[test]
    fn edge_cases() {
        let tree = tree_of(&reference_leaves());
        let r3 = root(&tree, 3).unwrap();
        // Out of range requests.
        assert_eq!(inclusion_proof(&tree, 3, 3), Err(ProofError::OutOfRange));
        assert_eq!(inclusion_proof(&tree, 0, 0), Err(ProofError::OutOfRange));
        assert_eq!(consistency_proof(&tree, 4, 3), Err(ProofError::OutOfRange));
        assert!(!verify_inclusion(&leaf_hash(b""), 0, 0, &[], &EMPTY_ROOT));
        assert!(!verify_inclusion(&leaf_hash(b""), 3, 3, &[], &r3));
        assert!(!verify_consistency(4, 3, &r3, &r3, &[]));
        // A tree of one leaf: the root is the leaf hash, the path is empty.
        let one = root(&tree, 1).unwrap();
        assert_eq!(one, leaf_hash(b""));
        assert!(verify_inclusion(&one, 0, 1, &[], &one));
        // Equal sizes: empty proof, equal roots.
        assert!(verify_consistency(3, 3, &r3, &r3, &[]));
        assert!(!verify_consistency(3, 3, &r3, &one, &[]));
        assert!(!verify_consistency(3, 3, &r3, &r3, &[r3]));
        // From the empty tree: empty proof, and the old root must be the empty root.
        assert!(verify_consistency(0, 3, &EMPTY_ROOT, &r3, &[]));
        assert!(verify_consistency(0, 0, &EMPTY_ROOT, &EMPTY_ROOT, &[]));
        assert!(!verify_consistency(0, 0, &EMPTY_ROOT, &r3, &[]));
        assert!(!verify_consistency(0, 3, &r3, &r3, &[]));
        assert!(!verify_consistency(0, 3, &EMPTY_ROOT, &r3, &[r3]));
        // 0 < old < new never has an empty proof.
        let r4 = root(&tree, 4).unwrap();
        assert!(!verify_consistency(3, 4, &r3, &r4, &[]));
        assert!(!verify_consistency(
            2,
            4,
            &root(&tree, 2).unwrap(),
            &r4,
            &[]
        ));
        // Sizes beyond what was appended: the store lacks the nodes.
        assert!(matches!(root(&tree, 9), Err(ProofError::Store(_))));
        assert!(matches!(
            inclusion_proof(&tree, 0, 9),
            Err(ProofError::Store(_))
        ));
        assert!(matches!(
            consistency_proof(&tree, 3, 9),
            Err(ProofError::Store(_))
        ));
        // Sizes at the top of the u64 range do not overflow the verifiers.
        assert!(!verify_inclusion(
            &one,
            u64::MAX - 1,
            u64::MAX,
            &[one; 64],
            &one
        ));
        assert!(!verify_consistency(
            u64::MAX - 1,
            u64::MAX,
            &one,
            &one,
            &[one; 65]
        ));
    }

    /// A store that fails, and one that counts reads.
    struct Failing;

    impl NodeStore for Failing {
        type Error = &'static str;
        fn node(&self, _: u32, _: u64) -> Result<Option<Hash>, Self::Error> {
            Err("database is down")
        }
    }

    struct Counting<'a>(&'a MemoryTree, Cell<u64>);

    impl NodeStore for Counting<'_> {
        type Error = std::convert::Infallible;
        fn node(&self, level: u32, index: u64) -> Result<Option<Hash>, Self::Error> {
            self.1.set(self.1.get() + 1);
            self.0.node(level, index)
        }
    }

    #[test]
    fn store_errors_are_reported() {
        let want = Some(ProofError::Store("database is down".into()));
        assert_eq!(root(&Failing, 5).err(), want);
        assert_eq!(root(&Failing, 0), Ok(EMPTY_ROOT));
        assert_eq!(inclusion_proof(&Failing, 1, 5).err(), want);
        assert_eq!(consistency_proof(&Failing, 2, 5).err(), want);
        // The message reaches operators through Display.
        assert_eq!(
            ProofError::Store("database is down".into()).to_string(),
            "merkle node store: database is down"
        );
    }

    #[test]
    fn reads_are_logarithmic() {
        let mut rng = Rng(7);
        let mut tree = MemoryTree::new();
        for _ in 0..5000 {
            tree.push(&rng.bytes());
        }
        let mut sizes: Vec<u64> = (1..=300).collect();
        sizes.extend((0..200).map(|_| rng.range(301, 5000)));
        for size in sizes {
            let log = 64 - u64::from((size - 1).leading_zeros()); // ceil(log2 size)
            let store = Counting(&tree, Cell::new(0));
            root(&store, size).unwrap();
            assert_eq!(store.1.get(), u64::from(size.count_ones()), "root {size}");
            for _ in 0..5 {
                let index = rng.range(0, size - 1);
                store.1.set(0);
                let proof = inclusion_proof(&store, index, size).unwrap();
                assert!(proof.len() as u64 <= log);
                assert!(
                    store.1.get() <= 2 * log,
                    "path {index} {size}: {}",
                    store.1.get()
                );
                let old = rng.range(1, size);
                store.1.set(0);
                let proof = consistency_proof(&store, old, size).unwrap();
                assert!(proof.len() as u64 <= log + 1);
                assert!(
                    store.1.get() <= 2 * log + 1,
                    "proof {old} {size}: {}",
                    store.1.get()
                );
            }
        }
    }

    /// `new_nodes` returns exactly the subtrees that each append completes, and they hash the
    /// right leaves; a store fed only by it matches `MemoryTree` node for node.
    #[test]
    fn new_nodes_are_exactly_the_complete_subtrees() {
        let mut rng = Rng(42);
        let leaves: Vec<Vec<u8>> = (0..300).map(|_| rng.bytes()).collect();
        let mut store: BTreeMap<(u32, u64), Hash> = BTreeMap::new();
        for (n, leaf) in leaves.iter().enumerate() {
            let n = n as u64;
            let nodes = new_nodes(n, leaf_hash(leaf), |level, index| {
                store.get(&(level, index)).copied().ok_or((level, index))
            })
            .unwrap();
            // Exactly the nodes whose last leaf is leaf n, lowest first.
            let expected: Vec<(u32, u64)> = (0..64u32)
                .take_while(|&k| (n + 1).is_multiple_of(1u64 << k))
                .map(|k| (k, (n + 1) / (1u64 << k) - 1))
                .collect();
            let got: Vec<(u32, u64)> = nodes.iter().map(|&(k, i, _)| (k, i)).collect();
            assert_eq!(got, expected, "append {n}");
            for (k, i, hash) in nodes {
                let lo = (i << k) as usize;
                assert_eq!(hash, ref_mth(&leaves[lo..lo + (1 << k)]), "node {k} {i}");
                assert!(
                    store.insert((k, i), hash).is_none(),
                    "node {k} {i} written twice"
                );
            }
        }
        // The accumulated store holds every complete subtree of 300 leaves and nothing else,
        // and agrees with MemoryTree.
        let n = leaves.len() as u64;
        let all: BTreeSet<(u32, u64)> = (0..64u32)
            .flat_map(|k| (0..n >> k).map(move |i| (k, i)))
            .collect();
        assert_eq!(store.keys().copied().collect::<BTreeSet<_>>(), all);
        let tree = tree_of(&leaves);
        for (&(k, i), hash) in &store {
            assert_eq!(tree.node(k, i).unwrap(), Some(*hash));
        }
        assert_eq!(tree.node(0, n).unwrap(), None);
        assert_eq!(tree.node(9, 0).unwrap(), None);
        // A lookup failure is passed through.
        assert_eq!(
            new_nodes(1, EMPTY_ROOT, |_, _| Err::<Hash, _>("gone")),
            Err("gone")
        );
        assert_eq!(
            new_nodes(0, EMPTY_ROOT, |_, _| Err::<Hash, _>("gone"))
                .unwrap()
                .len(),
            1
        );
    }

    /// Differential test against ct-merkle, an independent RFC 6962 implementation: at a range
    /// of sizes up to 10,000 leaves, roots and proofs are byte-identical and each side's
    /// verifier accepts the other's proofs.
    #[test]
    fn matches_ct_merkle() {
        use ct_merkle::mem_backed_tree::MemoryBackedTree;
        use ct_merkle::{ConsistencyProof, InclusionProof, RootHash};

        fn digest(hash: &Hash) -> &ct_merkle::digest::Output<Sha256> {
            ct_merkle::digest::Output::<Sha256>::from_slice(hash)
        }
        fn ours(bytes: &[u8]) -> Vec<Hash> {
            bytes.chunks(32).map(|c| c.try_into().unwrap()).collect()
        }

        let mut rng = Rng(2024);
        let mut sizes: BTreeSet<u64> = [1, 2, 3, 5, 10_000].into();
        for p in [4u64, 8, 64, 512, 1024, 4096, 8192] {
            sizes.extend([p - 1, p, p + 1]);
        }
        sizes.extend((0..6).map(|_| rng.range(1, 10_000)));

        let mut tree = MemoryTree::new();
        let mut theirs = MemoryBackedTree::<Sha256, Vec<u8>>::new();
        let mut leaves = Vec::new();
        let mut checked = 0;
        for size in 1..=10_000u64 {
            let leaf = rng.bytes();
            tree.push(&leaf);
            theirs.push(leaf.clone());
            leaves.push(leaf);
            if !sizes.contains(&size) {
                continue;
            }
            let root_hash = root(&tree, size).unwrap();
            let their_root = theirs.root();
            assert_eq!(their_root.as_bytes().as_slice(), root_hash, "root {size}");

            let mut indices: Vec<u64> = vec![0, size - 1, size / 2];
            indices.extend((0..8).map(|_| rng.range(0, size - 1)));
            for index in indices {
                let proof = inclusion_proof(&tree, index, size).unwrap();
                let their = theirs.prove_inclusion(index as usize);
                assert_eq!(ours(their.as_bytes()), proof, "path {index} {size}");
                let leaf = &leaves[index as usize];
                let our_proof = InclusionProof::<Sha256>::from_digests(proof.iter().map(digest));
                assert!(their_root.verify_inclusion(leaf, index, &our_proof).is_ok());
                let their_proof = ours(their.as_bytes());
                assert!(verify_inclusion(
                    &leaf_hash(leaf),
                    index,
                    size,
                    &their_proof,
                    &root_hash
                ));
            }

            let mut olds: Vec<u64> =
                vec![1, size, size / 2 + 1, (size.next_power_of_two() / 2).max(1)];
            olds.extend((0..8).map(|_| rng.range(1, size)));
            for old in olds {
                let old_root = root(&tree, old).unwrap();
                let proof = consistency_proof(&tree, old, size).unwrap();
                let their = theirs.prove_consistency((size - old) as usize);
                assert_eq!(ours(their.as_bytes()), proof, "proof {old} {size}");
                let our_proof = ConsistencyProof::<Sha256>::from_digests(proof.iter().map(digest));
                let their_old = RootHash::<Sha256>::new(*digest(&old_root), old);
                assert!(
                    their_root
                        .verify_consistency(&their_old, &our_proof)
                        .is_ok()
                );
                let their_proof = ours(their.as_bytes());
                assert!(verify_consistency(
                    old,
                    size,
                    &old_root,
                    &root_hash,
                    &their_proof
                ));
                checked += 1;
            }
        }
        assert!(checked >= 12 * sizes.len());
    }
}
